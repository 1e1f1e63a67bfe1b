"""What the agent counts, and the failures it survived: shown by ``guard status``.

``Counters`` are the pipeline's and launch control's tallies. ``Problems`` is where every
failure the agent survives goes instead of a bare ``except: pass``: counted by kind
(``Problem``), the last one kept for ``guard status``, and each distinct one logged once
as a ``guard-error`` record carrying its kind.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

from ..audit.record import admin_record
from ..verdict import Problem

_SEEN_MAX = 1024            # distinct failures remembered, so each is logged once


@dataclass
class Counters:
    queued: int = 0
    scanned: int = 0
    clean: int = 0
    suspicious: int = 0
    malicious: int = 0
    quarantined: int = 0
    failed: int = 0
    skipped_unchanged: int = 0
    dropped: int = 0
    sweeps: int = 0
    errors: int = 0
    watch_overflows: int = 0       # inotify queue overflows: folders watched afresh, swept

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def bump(self, name: str, by: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + by)

    def to_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


class Problems:
    """report(kind, message): count it, remember it as the last error, and log it once.

    *log* writes a record to the audit log and never raises (``AuditSink``); a failure to
    write the log itself (``Problem.AUDIT_WRITE``) is counted and shown, never written
    through the log that just failed. Safe from any thread.
    """

    def __init__(self, counters: Counters, log: Callable[[dict[str, Any]], None]
                 | None = None):
        self.counters = counters
        self.log = log
        self.by_kind: dict[str, int] = {}
        self.last_error = ""
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._lock = threading.Lock()

    def report(self, kind: Problem, message: str) -> None:
        with self._lock:
            self.by_kind[kind.value] = self.by_kind.get(kind.value, 0) + 1
            self.last_error = message
            key = (kind.value, message)
            first = key not in self._seen
            if first:
                self._seen[key] = None
                while len(self._seen) > _SEEN_MAX:
                    self._seen.popitem(last=False)
        self.counters.bump("errors")
        if first and self.log is not None and kind is not Problem.AUDIT_WRITE:
            self.log(admin_record("guard-error", outcome="failure", message=message,
                                  kind=kind.value))

    def clear_last(self, message: str) -> None:
        """A failure shown as the last error is over (a good allowlist again)."""
        with self._lock:
            if self.last_error == message:
                self.last_error = ""

    def to_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self.by_kind)


class AuditSink:
    """The one way the agent's rooms write audit records: to the log, then a poke to the
    SIEM forwarder. Never raises: a record that cannot be written is reported to
    *problems* as ``Problem.AUDIT_WRITE`` (counted, shown in ``guard status``)."""

    def __init__(self, log: Any, problems: Problems, forwarder: Any = None):
        self.log = log
        self.problems = problems
        self.forwarder = forwarder

    def __call__(self, record: dict[str, Any]) -> None:
        try:
            self.log.write(record)
        except Exception as exc:  # noqa: BLE001 - any failure of the log is reported
            action = record.get("event", {}).get("action", "?")
            self.problems.report(Problem.AUDIT_WRITE, f"audit log: a {action} record was "
                                 f"not written: {type(exc).__name__}: {exc}")
            return
        forwarder = self.forwarder
        if forwarder is not None:
            forwarder.poke()               # to the SIEM now, not at the next poll
