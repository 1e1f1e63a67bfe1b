"""decide_exec(): may this launch run? Facts about the file in, an ExecDecision out.

Pure: no I/O, no clock (the caller passes *now*), no globals. The mode is applied last,
the way Santa's policy processor applies monitor and lockdown at the end:

- an allowlist entry that matches allows (an expired one never does);
- a path-glob entry approves a place, not a content: a file judged malicious is not
  allowed by one (hash and signer entries name the content, and still allow);
- everything else is denied in enforce mode, and runs but is logged as "would deny" in
  monitor mode;
- break-glass lets everything run.

A decision lasts (launch control caches it for the same file, unchanged) unless the file
was open for writing when it was read: it may change after the read without its
timestamps changing, so it is decided for that one launch.
"""

from __future__ import annotations

import datetime as _dt

from ..verdict import (ExecDecision, ExecTarget, How, Level, Mode, VerdictSummary)
from .allowlist import Entry


def decide_exec(target: ExecTarget, match: Entry | None, verdict: VerdictSummary | None,
                mode: Mode, now: _dt.datetime, *, break_glass: bool = False
                ) -> ExecDecision:
    """The answer for one launch of *target*. *match*: the allowlist entry that matched
    its content, path or signer (or None); *verdict*: its scan's verdict, if known."""
    if break_glass:
        return ExecDecision(True, How.BREAK_GLASS, "break-glass: monitor mode in force",
                            mode=Mode.MONITOR)
    lasting = not target.writable
    if match is not None and match.expired(now.date()):
        match = None
    malicious = verdict is not None and verdict.level is Level.MALICIOUS
    overridden = ""
    if match is not None and match.kind == "path" and malicious:
        overridden = (f"allowlist entry {match.index + 1} (line {match.line}) allows the "
                      "path, but the file was judged malicious")
        match = None
    if match is not None:
        where = f"allowlist entry {match.index + 1} (line {match.line})"
        return ExecDecision(True, How.DECIDED, where, where, mode=mode, lasting=lasting)
    why = overridden or ("judged malicious and not on the allowlist" if malicious
                         else "not on the allowlist")
    if mode is Mode.ENFORCE:
        return ExecDecision(False, How.DECIDED, f"{why}, enforce mode", mode=mode,
                            lasting=lasting)
    return ExecDecision(True, How.DECIDED, f"{why}, monitor mode (would deny)",
                        would_deny=True, mode=mode, lasting=lasting)


def exempt(because: str) -> ExecDecision:
    """A launch launch control does not judge (the guard's own files and processes)."""
    return ExecDecision(True, How.EXEMPT, because)
