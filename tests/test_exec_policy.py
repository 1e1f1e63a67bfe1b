"""The exec policy from data: decide_exec() is pure, so every case is a row of facts and
the answer they must give. No files, no processes, no clock."""

from __future__ import annotations

import datetime as dt

import pytest

from guard.policy.allowlist import Entry
from guard.policy.exec_policy import decide_exec, exempt
from guard.verdict import ExecTarget, FileIdentity, How, Level, Mode, VerdictSummary

NOW = dt.datetime(2026, 12, 3, 12, 0)
FILE = ExecTarget("/home/ann/Downloads/tool", FileIdentity(1, 2, 3, 4, 5), "ab" * 32)
OPEN_FOR_WRITING = ExecTarget(FILE.path, FILE.identity, FILE.sha256, writable=True)


def entry(kind: str, expires: dt.date | None = None, index: int = 2, line: int = 9) -> Entry:
    return Entry(kind, "x", "ticket SEC-1", "alice", expires, line, index)


MALICIOUS = VerdictSummary(Level.MALICIOUS, ("type-mismatch",))
SUSPICIOUS = VerdictSummary(Level.SUSPICIOUS, ("executable",))

# (case, target, match, verdict, mode, allow, how, would_deny, because contains, action)
CASES = [
    ("hash entry allows", FILE, entry("sha256"), None, Mode.ENFORCE,
     True, How.DECIDED, False, "allowlist entry 3 (line 9)", "exec-allowed"),
    ("signer entry allows", FILE, entry("signer"), None, Mode.ENFORCE,
     True, How.DECIDED, False, "allowlist entry 3", "exec-allowed"),
    ("path entry allows a suspicious file", FILE, entry("path"), SUSPICIOUS, Mode.ENFORCE,
     True, How.DECIDED, False, "allowlist entry 3", "exec-allowed"),
    ("path entry does not allow a malicious file", FILE, entry("path"), MALICIOUS,
     Mode.ENFORCE, False, How.DECIDED, False, "allows the path, but the file was judged "
     "malicious", "exec-denied"),
    ("hash entry allows even a malicious file (it names the content)", FILE,
     entry("sha256"), MALICIOUS, Mode.ENFORCE, True, How.DECIDED, False, "allowlist entry",
     "exec-allowed"),
    ("no entry: denied in enforce mode", FILE, None, None, Mode.ENFORCE,
     False, How.DECIDED, False, "not on the allowlist, enforce mode", "exec-denied"),
    ("no entry, malicious: denied, says so", FILE, None, MALICIOUS, Mode.ENFORCE,
     False, How.DECIDED, False, "judged malicious and not on the allowlist", "exec-denied"),
    ("no entry: runs in monitor mode, would deny", FILE, None, None, Mode.MONITOR,
     True, How.DECIDED, True, "monitor mode (would deny)", "exec-would-deny"),
    ("expired entry never allows", FILE, entry("sha256", dt.date(2026, 12, 3)), None,
     Mode.ENFORCE, False, How.DECIDED, False, "not on the allowlist", "exec-denied"),
    ("entry expiring tomorrow still allows", FILE, entry("sha256", dt.date(2026, 12, 4)),
     None, Mode.ENFORCE, True, How.DECIDED, False, "allowlist entry", "exec-allowed"),
]


@pytest.mark.parametrize("case,target,match,verdict,mode,allow,how,would_deny,because,action",
                         CASES, ids=[c[0] for c in CASES])
def test_decide_exec(case, target, match, verdict, mode, allow, how, would_deny, because,
                     action):
    d = decide_exec(target, match, verdict, mode, NOW)
    assert (d.allow, d.how, d.would_deny, d.action) == (allow, how, would_deny, action)
    assert because in d.because
    assert d.mode is mode
    assert d.lasting, "a file nobody is writing is decided for every launch until it changes"


def test_a_file_open_for_writing_is_decided_for_this_launch_only():
    for match in (entry("sha256"), None):
        d = decide_exec(OPEN_FOR_WRITING, match, None, Mode.ENFORCE, NOW)
        assert not d.lasting


def test_break_glass_lets_everything_run_and_is_never_cached():
    d = decide_exec(FILE, None, MALICIOUS, Mode.ENFORCE, NOW, break_glass=True)
    assert (d.allow, d.how, d.action, d.mode, d.lasting) == (
        True, How.BREAK_GLASS, "exec-allowed", Mode.MONITOR, False)


def test_exempt_and_timeouts_name_their_record():
    assert exempt("the guard's own files").how is How.EXEMPT
    from guard.verdict import ExecDecision
    assert ExecDecision(True, How.FAIL_OPEN, "no decision within 1 s").action == "exec-timeout"
    assert ExecDecision(False, How.FAIL_CLOSED, "no decision").action == "exec-timeout"
