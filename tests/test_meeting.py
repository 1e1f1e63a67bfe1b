"""Meeting detection against real processes: the /proc scan reads each name at most twice."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from guard.sources.meeting import MeetingMonitor

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")

# A child that is "python" when it starts and renames itself (as an exec would) on cue.
_RENAMER = r"""
import ctypes, sys
sys.stdin.readline()
ctypes.CDLL(None).prctl(15, b"zoommtg", 0, 0, 0)       # PR_SET_NAME
print("renamed", flush=True)
sys.stdin.readline()
"""


def _poll_until(mon: MeetingMonitor, want: bool, timeout_s: float = 5.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if mon.poll() == want:
            return True
        time.sleep(0.05)
    return False


def test_a_name_that_changes_right_after_the_first_look_is_seen():
    now = [0.0]
    mon = MeetingMonitor(["zoommtg"], linger_s=60, clock=lambda: now[0])
    child = subprocess.Popen([sys.executable, "-c", _RENAMER], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.2)
        assert mon.poll() is False                  # first look: the child is "python"
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "renamed"
        assert mon.poll() is True and mon.app == "zoommtg"    # the second look sees it
        assert mon.poll() is True                   # settled, still known
    finally:
        child.kill()
        child.wait(5)
    assert mon.poll() is True                       # gone, but within the linger
    now[0] += 61
    assert mon.poll() is False


def test_settled_processes_are_not_read_again_and_new_ones_are():
    mon = MeetingMonitor(["zoommtg"], linger_s=0)
    mon.poll()
    mon.poll()
    settled = dict(mon._names)
    assert settled and not mon._fresh
    fake = subprocess.Popen([sys.executable, "-c",
                             "import ctypes,time; ctypes.CDLL(None).prctl(15, b'zoommtg', 0,0,0);"
                             " time.sleep(30)"])
    try:
        assert _poll_until(mon, True)
    finally:
        fake.kill()
        fake.wait(5)
    assert _poll_until(mon, False)
    assert str(fake.pid) not in mon._names          # exited processes are forgotten
