"""Hostile case 6: the inotify queue overflows.

The kernel queue of an inotify instance holds ``max_queued_events`` events; past that it
drops events and queues one IN_Q_OVERFLOW. The case lowers the limit (host-wide, so only
from the agent's start to the end of the burst, and always put back), starts the real
agent on a watched folder (a tmpfs, so that the burst fits in under a second, as on a
fast SSD) and drops ``n`` files in under a second, half of them in nested folders made
during the burst, before their watch can exist; every 250th file is a program disguised
as a PDF. Expected: every file gets a verdict in the audit log (the clean ones too:
log_clean is on), every disguised program is quarantined, the agent stays up and keeps
no replaced inotify instance open, and once the burst is over it goes quiet: no
overflow or sweep keeps repeating.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import builders as b
from daemon_support import Agent, wait_until, write_config
from figures import CASES, case, check
from vault_world import tmpfs

QUEUE_LIMIT = Path("/proc/sys/fs/inotify/max_queued_events")
LOWERED = 256              # events; the default is 16384
PER_FOLDER = 20            # files written into each folder made during the burst
DISGUISED_EVERY = 250      # one file in this many is a program named .pdf
QUIET_S = 4.0              # after the last verdict: no more overflows or sweeps than one


@contextlib.contextmanager
def lowered_queue(limit: int):
    """Lower max_queued_events (read by each inotify instance when it is made); the
    original value is always put back."""
    original = QUEUE_LIMIT.read_text().strip()
    QUEUE_LIMIT.write_text(str(limit))
    try:
        yield int(original)
    finally:
        QUEUE_LIMIT.write_text(original)


def _drain(stream, into: list[str]) -> threading.Thread:
    """Read a child's pipe to the end, so its warnings can never fill the pipe and block it."""
    def read() -> None:
        for line in stream:
            into.append(line)
    t = threading.Thread(target=read, name="overflow-drain", daemon=True)
    t.start()
    return t


def _burst(down: Path, n: int, pe: bytes) -> tuple[dict[str, bool], float]:
    """n files as fast as they can be written; after every PER_FOLDER files at the top a
    new two-level folder takes the next PER_FOLDER. Returns {path: disguised}, seconds."""
    expected: dict[str, bool] = {}
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    folder = os.fspath(down)
    started = time.monotonic()
    for i in range(n):
        block = i // PER_FOLDER
        if i % PER_FOLDER == 0:
            if block % 2:
                folder = os.path.join(os.fspath(down), f"n{block}", "inner")
                os.makedirs(folder)
            else:
                folder = os.fspath(down)
        disguised = i % DISGUISED_EVERY == DISGUISED_EVERY - 1
        path = os.path.join(folder, f"f{i}.pdf" if disguised else f"f{i}.txt")
        fd = os.open(path, flags, 0o644)
        try:
            os.write(fd, pe if disguised else b"note %d\n" % i)
        finally:
            os.close(fd)
        expected[path] = disguised
    return expected, round(time.monotonic() - started, 3)


class _Verdicts:
    """The audit log's verdicts per path, read on from where it was last read."""

    def __init__(self, log: Path):
        self.log = log
        self.offset = 0
        self.partial = b""
        self.by_path: dict[str, list[dict]] = {}

    def read(self) -> dict[str, list[dict]]:
        import json
        try:
            with open(self.log, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return self.by_path
        self.offset += len(chunk)
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            if not line.strip():
                continue
            rec = json.loads(line)
            if "verdict" in (rec.get("guard") or {}):
                self.by_path.setdefault((rec.get("file") or {}).get("path", ""), []).append(rec)
        return self.by_path


@case("6", "inotify overflow: 10k files in under a second", fast=2000, full=10_000,
      unit="files")
def inotify_overflow(n: int, workdir: Path) -> dict:
    with tmpfs(workdir / "Downloads", "512m") as down:
        return _run(n, workdir, down)


def _run(n: int, workdir: Path, down: Path) -> dict:
    # launch control off: its fanotify open permission makes every write in the watched
    # folder wait for the agent, and a writer so paced never overflows the inotify queue
    cfg = write_config(workdir, "enforce", 'log_clean = true\nlaunch_control = "off"',
                       watch=down)
    pe = b.pe32()
    agent = Agent(workdir, cfg)
    lines: list[str] = []
    drains: list[threading.Thread] = []
    verdicts = _Verdicts(workdir / "log" / "audit.jsonl")
    expected: dict[str, bool] = {}
    fig: dict = dict(files=0, burst_s=0.0, nested_files=0, verdicted=0, missing=0,
                     duplicated=0, disguised=0, quarantined=0, overflows=0, sweeps=0,
                     dropped=0, rewatches=0, by_sweep=0, by_new_folder=0,
                     nested_missing=0, to_last_verdict_s=-1.0, after_quiet=0, agent_died=0,
                     inotify_fds_leaked=0, stop_failed=0)
    try:
        with lowered_queue(LOWERED) as original:
            fig["queue_limit"] = f"{LOWERED} (host {original})"
            agent.start()
            drains = [_drain(agent.proc.stderr, lines), _drain(agent.proc.stdout, lines)]
            before = agent.status()["counters"]
            inotify_fds = _inotify_fds(agent.proc.pid)
            expected, fig["burst_s"] = _burst(down, n, pe)
        burst_end = time.monotonic()
        fig["files"] = len(expected)
        fig["nested_files"] = sum(1 for p in expected if os.path.dirname(p) != os.fspath(down))
        fig["disguised"] = sum(expected.values())

        def all_verdicted() -> bool:
            got = verdicts.read()
            return all(p in got for p in expected) or agent.proc.poll() is not None
        done = wait_until(all_verdicted, 60.0 + 0.02 * n, interval=0.25)
        if done and agent.proc.poll() is None:
            fig["to_last_verdict_s"] = round(time.monotonic() - burst_end + fig["burst_s"], 2)
        at_done = (agent.status() or {}).get("counters", {})
        overflows_at_done = _overflows(lines)
        time.sleep(QUIET_S)         # a watcher that keeps overflowing shows it now
        after = (agent.status() or {}).get("counters", {})
        fig["after_quiet"] = (_overflows(lines) - overflows_at_done
                              + after.get("sweeps", 0) - at_done.get("sweeps", 0))
        fig["agent_died"] = int(agent.proc.poll() is not None)
        if not fig["agent_died"]:      # replaced observers leave no inotify instance behind
            fig["inotify_fds_leaked"] = max(0, _inotify_fds(agent.proc.pid) - inotify_fds)
        fig["sweeps"] = after.get("sweeps", 0) - before["sweeps"]
        fig["dropped"] = after.get("dropped", 0) - before["dropped"]
    finally:
        fig["stop_failed"] = _stop(agent, drains)
    got = verdicts.read()
    fig["verdicted"] = sum(1 for p in expected if p in got)
    fig["missing"] = len(expected) - fig["verdicted"]
    fig["duplicated"] = sum(1 for p in expected if len(got.get(p, ())) > 1)
    fig["quarantined"] = sum(1 for p, bad in expected.items() if bad and any(
        r["event"]["action"] == "quarantine" for r in got.get(p, ())) and not os.path.exists(p))
    first = {p: got[p][0]["guard"].get("trigger") for p in expected if p in got}
    fig["by_sweep"] = sum(1 for t in first.values() if t == "sweep")
    fig["by_new_folder"] = sum(1 for t in first.values() if t == "new-folder")
    fig["nested_missing"] = sum(1 for p in expected if p not in got
                                and os.path.dirname(p) != os.fspath(down))
    fig["overflows"] = _overflows(lines)
    fig["rewatches"] = sum(1 for line in list(lines) if "afresh" in line)
    storm = int(fig["after_quiet"] > 1)
    fig["failures"] = (fig["missing"] + (fig["disguised"] - fig["quarantined"]) + storm
                       + fig["agent_died"] + fig["stop_failed"] + fig["inotify_fds_leaked"])
    if fig["failures"]:
        lost = [os.path.relpath(p, down) for p in expected if p not in got][:5]
        fig["problems"] = f"no verdict for {lost}; agent said: {''.join(lines)[-600:]!r}"
    return fig


def _overflows(lines: list[str]) -> int:
    """Overflows the agent reported: guard's warning says how many it took together,
    watchdog's own (without guard's reader) comes once per overflow."""
    count = 0
    for line in list(lines):
        m = re.search(r"inotify queue overflowed(?: (\d+) time)?.*events were lost", line, re.I)
        if m:
            count += int(m.group(1) or 1)
    return count


def _inotify_fds(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify"
    return count


def _stop(agent, drains: list[threading.Thread]) -> int:
    """SIGTERM, wait, then read the pipes to their end; 1 when the agent did not exit
    cleanly (killed after a timeout, or a non-zero status)."""
    proc = agent.proc
    if proc is None:
        return 0
    failed = 0
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            failed = 1
    failed |= int(proc.returncode != 0)
    for t in drains:
        t.join(10)
    for stream in (proc.stdout, proc.stderr):
        stream.close()
    return failed


@pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux",
                    reason="lowering the inotify queue needs root on Linux")
def test_inotify_overflow(tmp_path):
    check(CASES["6"].run(CASES["6"].fast, tmp_path))


@pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux",
                    reason="lowering the inotify queue needs root on Linux")
def test_overflows_that_go_on_rewatch_at_growing_gaps(tmp_path):
    """Bursts every 0.1 s for 4 s, each one overflowing a 64-event queue (kept low, so the
    fresh observers overflow too): overflows are taken together, the rewatches (each one
    sweep) come at most after the gaps of 1 s, then 2 s, and stop when the bursts stop."""
    from guard.config import WatchFolder
    from guard.sources.watch import FolderWatcher

    calls: list[float] = []
    with tmpfs(tmp_path / "w", "64m") as folder:
        watcher = FolderWatcher([WatchFolder(folder)], lambda *_: None,
                                on_overflow=lambda: calls.append(time.monotonic()))
        rewatches = _overflow_bursts(watcher, folder, calls)
    gaps = [round(b - a, 2) for a, b in zip(calls, calls[1:])]
    assert watcher.overflows > len(calls), (watcher.overflows, calls)
    assert len(calls) == rewatches
    assert 3 <= len(calls) <= 5, gaps                 # 0.5, 1.5, 3.5 s, then after the last burst
    # the gaps are kept between rewatch starts; a call follows its rewatch's own build
    assert all(g >= want - 0.25 for g, want in zip(gaps, (1.0, 2.0, 4.0))), gaps
    assert not any(t.name == "guard-rewatch" and t.is_alive() for t in threading.enumerate())


def _overflow_bursts(watcher, folder: Path, calls: list[float]) -> int:
    k = 0
    try:
        with lowered_queue(64):
            watcher.start()
            first = time.monotonic()
            while time.monotonic() - first < 4.0:
                for _ in range(300):
                    (folder / f"f{k}").write_bytes(b"x")
                    k += 1
                time.sleep(0.1)
            last_burst = time.monotonic()
            time.sleep(0.2)
        assert wait_until(lambda: calls and calls[-1] > last_burst, 10.0), calls
        settled = len(calls)
        time.sleep(2.5)
        assert len(calls) == settled, "rewatches went on after the bursts stopped"
        return watcher.rewatches
    finally:
        watcher.stop()
