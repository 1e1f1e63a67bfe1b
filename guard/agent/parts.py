"""Every room the agent is built from, in one place (like Santa's SantadDeps).

``guard.daemon`` builds a ``Parts`` from the configuration and swaps members on reload;
the housekeeper and the status report read them at the time they need them, so they
always see the parts in force.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config
from ..verdict import Mode
from .health import AuditSink, Counters, Problems
from .verdicts import VerdictMemory


class ModeSwitch:
    """The configured mode, unless break-glass forces monitor mode: the break-glass file
    is there, a regular file (not a link) owned by the agent's own user (root in a
    deployment), so nobody else can switch enforcement off."""

    def __init__(self, mode: Mode, break_glass_file: Path):
        self.mode = mode
        self.break_glass_file = Path(break_glass_file)

    def break_glass_on(self) -> bool:
        try:
            st = os.lstat(self.break_glass_file)
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()

    def effective(self) -> Mode:
        return Mode.MONITOR if self.break_glass_on() else self.mode


@dataclass
class Parts:
    config: Config
    counters: Counters
    problems: Problems
    audit: AuditSink
    mode: ModeSwitch
    verdicts: VerdictMemory
    vault: Any
    notifier: Any
    scanner: Any
    rule_errors: list[str]
    meeting: Any
    allowlist: Any                      # AllowlistStore
    pipeline: Any = None                # FilePipeline
    watcher: Any = None                 # FolderWatcher
    launch: Any = None                  # LaunchControl
    puller: Any = None                  # AllowlistPuller | None
    forwarder: Any = None               # SyslogForwarder | None
    started_at: float = field(default_factory=time.time)
