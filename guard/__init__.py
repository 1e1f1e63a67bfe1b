"""guard: stops executables disguised as documents before they run.

The library's entry points (``scan_path``, ``Scanner``, ``load_rules``, the Verdict
vocabulary) are imported on first use, not here: every command and room imports this
package, and most of them (``guard --help``, ``guard status``, the vault, the audit log)
never scan, so they must not pay for YARA, libmagic and pefile.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Family", "FileType", "Level", "Reason", "ScanOptions", "Scanner", "Verdict",
           "load_rules", "scan_path", "__version__"]

_LAZY = {"ScanOptions": "scanner", "Scanner": "scanner", "load_rules": "scanner",
         "scan_path": "scanner", "Family": "verdict", "FileType": "verdict",
         "Level": "verdict", "Reason": "verdict", "Verdict": "verdict"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'guard' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
