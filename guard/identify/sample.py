"""Sample: every fact gathered about one file, before anything is judged."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..analyze.yara_scan import RuleHit
from ..verdict import Failure, FileIdentity, FileType, Skip
from .containers import ContainerFacts
from .names import NameFacts
from .office import MacroFacts
from .pdf import PdfFacts
from .pe import PeFacts
from .shortcut import ShortcutFacts


@dataclass(frozen=True)
class MemberHit:
    """A YARA hit on a member of a container."""
    member: str
    hit: RuleHit


@dataclass
class Sample:
    path: str
    name: NameFacts
    size: int = 0
    sha256: str = ""
    type: FileType | None = None
    pe: PeFacts | None = None
    shortcut: ShortcutFacts | None = None
    macros: MacroFacts | None = None
    pdf: PdfFacts | None = None
    container: ContainerFacts | None = None
    rule_hits: list[RuleHit] = field(default_factory=list)
    member_hits: list[MemberHit] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)   # "pe: <why>", "lnk: <why>"
    too_large: bool = False
    limits_exceeded: list[str] = field(default_factory=list)  # "yara: timed out after 10 s"
    error: str | None = None
    failure: Failure | None = None           # the kind of error, when there is one
    skipped: str = ""          # why the file was not opened (fifo, symlink out of root)
    skip: Skip | None = None                 # the kind of skip, when skipped
    identity: FileIdentity | None = None     # the file that was read, unchanged
    owner_uid: int | None = None
