"""Errors raised by library code. Only ``guard.cli`` turns them into output and exit codes."""

from __future__ import annotations


class GuardError(Exception):
    """Base class. ``path`` and ``line`` locate the cause when they are known."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = f"{self.path}:{self.line}: " if self.line is not None else f"{self.path}: "
        return f"{where}{self.message}"


class RuleError(GuardError):
    """A YARA rule file that does not compile (or a rules folder that cannot be read)."""


class ScanError(GuardError):
    """A file that could not be scanned (vanished, unreadable, not a regular file)."""


class ConfigError(GuardError):
    """A configuration file that is malformed or names impossible values."""


class QuarantineError(GuardError):
    """A quarantine, restore or purge that was refused or failed; nothing was lost."""


class FileChanged(QuarantineError):
    """The file on disk is no longer the one that was scanned: rescan, don't move."""


class SourceUnavailable(GuardError):
    """An event source (fanotify, a watched folder) cannot be used here."""


class LockedError(GuardError):
    """Another guard instance already runs with this configuration."""
