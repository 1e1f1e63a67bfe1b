"""The shared vocabulary: what a file *is* (Verdict) and why (Reason).

Every string value here is stable: the audit log, SIEM parsers and admins' scripts
depend on it. Add members; never rename them.
"""

from __future__ import annotations

import base64
import enum
import os
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class Level(enum.Enum):
    """How bad a file is. Ordered: CLEAN < SUSPICIOUS < MALICIOUS."""

    CLEAN = "clean"
    SUSPICIOUS = "suspicious"
    MALICIOUS = "malicious"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def __lt__(self, other: "Level") -> bool:  # lets max() pick the worst level
        return self.rank < other.rank


_RANK = {Level.CLEAN: 0, Level.SUSPICIOUS: 1, Level.MALICIOUS: 2}


class Family(enum.Enum):
    """What kind of thing a file is, from the employee's point of view."""

    DOCUMENT = "document"
    IMAGE = "image"
    AUDIO = "audio"
    VIDEO = "video"
    ARCHIVE = "archive"
    DISK_IMAGE = "disk-image"
    EXECUTABLE = "executable"
    SCRIPT = "script"
    SHORTCUT = "shortcut"
    OTHER = "other"

    @property
    def runs(self) -> bool:
        """True for families that execute when opened (double-click or launch)."""
        return self in RUNNABLE


RUNNABLE = frozenset({Family.EXECUTABLE, Family.SCRIPT, Family.SHORTCUT})
# Families a lure pretends to be: anything a person opens to *look at*.
INERT = frozenset({Family.DOCUMENT, Family.IMAGE, Family.AUDIO, Family.VIDEO,
                   Family.ARCHIVE, Family.DISK_IMAGE})


class Code(str, enum.Enum):
    """Stable reason codes."""

    TYPE_MISMATCH = "type-mismatch"
    DOUBLE_EXTENSION = "double-extension"
    BIDI_OVERRIDE = "bidi-override"
    PADDED_NAME = "padded-name"
    LURE_NAME = "lure-name"
    EXEC_IN_CONTAINER = "exec-in-container"
    EMBEDDED_EXECUTABLE = "embedded-executable"
    MACRO_DOCUMENT = "macro-document"
    PDF_ACTIVE_CONTENT = "pdf-active-content"
    LNK_COMMAND = "lnk-command"
    EXECUTABLE = "executable"          # an honest executable, script or shortcut
    YARA_MATCH = "yara-match"
    ARCHIVE_BOMB = "archive-bomb"
    ENCRYPTED_CONTAINER = "encrypted-container"
    MALFORMED = "malformed"
    TOO_LARGE = "too-large"
    LIMIT_EXCEEDED = "limit-exceeded"
    SCAN_FAILED = "scan-failed"
    NOT_REGULAR = "not-regular-file"
    SYMLINK_SKIPPED = "symlink-skipped"


@dataclass(frozen=True)
class Reason:
    code: str                # a Code value
    severity: Level
    message: str             # one sentence an employee understands
    detail: str = ""         # for the SOC: "MZ/PE32+ header at 0, name ends .pdf"

    def to_dict(self) -> dict[str, str]:
        out = {"code": str(getattr(self.code, "value", self.code)), "severity": self.severity.value, "message": self.message}
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass(frozen=True)
class FileType:
    """What the content really is."""

    mime: str
    description: str
    family: Family
    kind: str = ""           # exact family member: "pe", "elf", "macho", "lnk", "zip", ...
    guessed: bool = False    # family rests on libmagic's keyword guess, not an exact check

    def to_dict(self) -> dict[str, str]:
        return {"mime": self.mime, "description": self.description,
                "family": self.family.value, "kind": self.kind}


UNKNOWN_TYPE = FileType("application/octet-stream", "unknown", Family.OTHER)


class FileIdentity(NamedTuple):
    """Which file, and whether it is unchanged since it was looked at: device, inode,
    size, mtime and ctime. ctime because utime puts an mtime back (a rewrite of the same
    size would pass) and nothing but the kernel sets ctime; it also tells a new file on a
    reused inode number.

    The one shape of a file's identity: scan results, the agent's memory of scanned files,
    launch decisions and the vault's check before a move all compare these. A named tuple,
    not a dataclass: launch control builds one for every exec it is asked about.
    """

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> "FileIdentity":
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    @property
    def inode(self) -> tuple[int, int]:
        """The file, whatever its content: device and inode."""
        return (self.dev, self.ino)

    def unchanged(self, st: os.stat_result) -> bool:
        """*st* is this file, with nothing written or changed since."""
        return self == FileIdentity.of(st)

    def to_dict(self) -> dict[str, int]:
        return self._asdict()


class Failure(enum.StrEnum):
    """Why a scan gave no full verdict, as a kind a program can act on (the text for
    people is ``Verdict.error``)."""

    CHANGED = "changed"          # written while it was read: scan again, never trust it
    UNREADABLE = "unreadable"    # vanished, no permission, an I/O error


class Skip(enum.StrEnum):
    """Why a path was not opened at all."""

    LINK = "link"                # a link not followed
    SPECIAL = "special"          # a FIFO, socket, device or folder


@dataclass(frozen=True)
class Verdict:
    """The scan's judgement of one file. Immutable; safe to pass between processes."""

    path: str
    level: Level
    reasons: tuple[Reason, ...] = ()
    sha256: str = ""
    size: int = 0
    type: FileType = UNKNOWN_TYPE
    claimed_family: Family = Family.OTHER
    rules: tuple[str, ...] = ()
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    skipped: bool = False    # not a regular file, or a link not followed: never opened
    # The file that was read (None when it was not read whole and unchanged), how long
    # the scan took, and the kind of failure when there was one.
    identity: FileIdentity | None = field(default=None, compare=False)
    owner_uid: int | None = field(default=None, compare=False)
    scan_ms: float = field(default=0.0, compare=False)
    failure: Failure | None = None
    skip: Skip | None = None

    @property
    def flagged(self) -> bool:
        return self.level is not Level.CLEAN

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(str(getattr(r.code, "value", r.code)) for r in self.reasons)

    @property
    def summary(self) -> str:
        """The one sentence for the employee: the worst reason's message."""
        worst = [r for r in self.reasons if r.severity is self.level]
        return worst[0].message if worst else ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready. ``path`` is always valid Unicode; when the real name is not valid
        UTF-8, ``path_b64`` carries its exact bytes (base64) so nothing is lost."""
        raw = path_b64(self.path)
        path = self.path if raw is None else \
            self.path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        out = {
            "path": path,
            "sha256": self.sha256,
            "size": self.size,
            "verdict": self.level.value,
            "type": self.type.to_dict(),
            "claimed_family": self.claimed_family.value,
            "reasons": [r.to_dict() for r in self.reasons],
            "rules": list(self.rules),
            "error": self.error,
            "skipped": self.skipped,
            "details": self._details(),
        }
        if raw is not None:
            out["path_b64"] = raw
        return out


    def _details(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scan_ms": round(self.scan_ms, 2)}
        if self.identity is not None:
            out["stat"] = {**self.identity.to_dict(), "uid": self.owner_uid}
        out.update(self.details)
        return out


def path_b64(path: str) -> str | None:
    """The exact bytes of a name that is not valid UTF-8 (read with surrogateescape, as
    os does), base64; None for a valid one. Records keep it beside the readable path."""
    try:
        path.encode("utf-8")
        return None
    except UnicodeEncodeError:
        return base64.b64encode(path.encode("utf-8", "surrogateescape")).decode("ascii")


class Action(enum.Enum):
    ALLOW = "allow"
    QUARANTINE = "quarantine"
    DENY_EXEC = "deny-exec"


class Mode(enum.StrEnum):
    """What the agent does with its judgement: MONITOR logs only, ENFORCE acts."""

    MONITOR = "monitor"
    ENFORCE = "enforce"


class FailMode(enum.StrEnum):
    """How a launch decision that misses its deadline is answered."""

    OPEN = "open"                # allow: the host keeps working (the default)
    CLOSED = "closed"            # deny: for high-security hosts


class Trigger(enum.StrEnum):
    """What made the agent look at a file."""

    CLOSED = "closed"            # the writer closed it
    MOVED = "moved"              # renamed or moved into a watched folder
    SETTLED = "settled"          # no close event: size and mtime held still
    SWEEP = "sweep"              # a reconciliation sweep
    NEW_FOLDER = "new-folder"    # a folder appeared: its files are swept
    RESCAN = "rescan"            # it changed while it was scanned or moved


@dataclass(frozen=True)
class Decision:
    """What the project does about a Verdict, given mode and context.

    In monitor mode ``action`` is ALLOW and ``intended`` keeps the real judgement.
    """

    action: Action
    intended: Action
    verdict: Verdict
    because: str             # "malicious, enforce mode", "meeting: strict policy"
    mode: Mode = Mode.ENFORCE
    meeting: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action.value, "intended": self.intended.value,
                "because": self.because, "mode": self.mode.value, "meeting": self.meeting}


@dataclass(frozen=True)
class VerdictSummary:
    """What launch control keeps of a file's verdict: small, by file and content."""

    level: Level
    codes: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    summary: str = ""

    @classmethod
    def of(cls, verdict: Verdict) -> "VerdictSummary":
        return cls(verdict.level, verdict.codes, verdict.rules, verdict.summary)


class How(enum.StrEnum):
    """How a launch was answered (``guard.decision.how`` in exec records)."""

    DECIDED = "decided"          # the exec policy decided it now
    CACHE = "cache"              # a decision made earlier for the same file, unchanged
    EXEMPT = "exempt"            # not a launch we judge (the guard itself, a data open)
    BREAK_GLASS = "break-glass"  # break-glass is on: everything runs, logged
    FAIL_OPEN = "fail-open"      # no decision by the deadline: allowed (fail_mode open)
    FAIL_CLOSED = "fail-closed"  # no decision by the deadline: denied (fail_mode closed)

    @property
    def timed_out(self) -> bool:
        return self in (How.FAIL_OPEN, How.FAIL_CLOSED)


@dataclass(frozen=True)
class ExecTarget:
    """The file a launch is about to run, as launch control read it."""

    path: str
    identity: FileIdentity
    sha256: str = ""
    writable: bool = False   # open for writing (or mapped writable) elsewhere right now


@dataclass(frozen=True)
class ExecDecision:
    """What launch control does about one launch. ``allow`` is the answer the kernel (or
    the monitor) got; ``would_deny`` says that enforce mode would have refused what
    monitor mode let run. ``entry`` names the allowlist entry that matched; ``lasting``
    says the answer holds for the same file, unchanged, next time (it is cached)."""

    allow: bool
    how: How
    because: str
    entry: str = ""
    would_deny: bool = False
    mode: Mode = Mode.ENFORCE
    lasting: bool = False

    @property
    def action(self) -> str:
        """The record's ``event.action``."""
        if self.how.timed_out:
            return "exec-timeout"
        if not self.allow:
            return "exec-denied"
        return "exec-would-deny" if self.would_deny else "exec-allowed"


class FlushReason(enum.StrEnum):
    """Why launch control's decision cache was emptied (``guard status`` counts them)."""

    ALLOWLIST_CHANGED = "allowlist-changed"   # an entry may allow or stop allowing
    MODE_CHANGED = "mode-changed"             # break-glass on or off: answers differ
    RULES_CHANGED = "rules-changed"           # verdicts may differ (a reload)
    FULL = "full"                             # more files than the cache holds


class Problem(enum.StrEnum):
    """Kinds of failure the agent survives; each is counted in ``guard status`` and
    logged once as a ``guard-error`` record with its kind."""

    AUDIT_WRITE = "audit-write"          # a record could not be written to the log
    SCAN = "scan"                        # a file's handling raised (the file is skipped)
    QUARANTINE = "quarantine"            # a move to the vault failed
    PROVENANCE = "provenance"            # a file's download metadata could not be read
    LAUNCH = "launch"                    # an exec event could not be read or answered well
    LAUNCH_RECORD = "launch-record"      # an exec decision could not be recorded
    LAUNCH_FOLLOW_UP = "launch-follow-up"  # the quarantine or notice after a denial failed
    NOTIFY = "notify"                    # a notification could not be delivered
    MEETING = "meeting"                  # the call-app poll failed
    HOUSEKEEPING = "housekeeping"        # a housekeeping step failed
    WATCH = "watch"                      # a folder could not be watched
    ALLOWLIST = "allowlist"              # an allowlist was refused (the last good stays)
    RELOAD = "reload"                    # a reload was refused (the last good stays)
    STATUS = "status"                    # status.json could not be written
    STALL = "stall"                      # the pipeline stopped making progress
    FORWARD = "forward"                  # records were lost before the SIEM got them
