"""The audit log: tamper-evident JSON lines (Elastic Common Schema) the SOC ships to its SIEM.

``writer.AuditLog`` appends hash-chained records and rotates by size; ``verify`` checks the
chain, follows the log (``guard log tail -f``) and renders records for people.
``record`` turns verdicts and decisions into record dicts; it is not imported here.
"""

from __future__ import annotations

from ..errors import GuardError


class AuditError(GuardError):
    """The audit log cannot be opened, written (disk full, unwritable) or read."""


# Imported after AuditError: both modules raise it.
from .verify import (Problem, VerifyResult, format_record, iter_records,  # noqa: E402
                     log_files, verify_log)
from .writer import ECS_VERSION, AuditLog, canonical_json  # noqa: E402

__all__ = ["ECS_VERSION", "AuditError", "AuditLog", "Problem", "VerifyResult",
           "canonical_json", "format_record", "iter_records", "log_files", "verify_log"]
