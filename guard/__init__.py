"""guard: stops executables disguised as documents before they run."""

from .scanner import ScanOptions, Scanner, load_rules, scan_path
from .verdict import Family, FileType, Level, Reason, Verdict

__version__ = "0.1.0"
__all__ = ["Family", "FileType", "Level", "Reason", "ScanOptions", "Scanner", "Verdict",
           "load_rules", "scan_path", "__version__"]
