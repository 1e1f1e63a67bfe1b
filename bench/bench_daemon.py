#!/usr/bin/env python3
"""Agent benchmark: what ``guard run`` costs and how fast it answers, measured from outside.

One run starts the real agent (``python -m guard run --config CFG``) on a temporary folder
and measures, in this order:

1. **Drop-to-verdict latency** for 1 KiB, 1 MiB and 10 MiB files. For each size, N drops
   (``--drops``, default 50; ``--quick`` 10), one at a time: the next file is written only
   once the agent has logged a verdict for the previous one. Even drops are benign random
   text (``note-N.txt``), odd drops are ``pe32.exe`` from the test corpus (tests/corpus) padded to the
   size and named ``Invoice-N.pdf`` (the agent quarantines them). Each file is written
   with a plain open/write/close, so inotify reports close-after-write. The clock
   (``time.monotonic``, bench side) starts just before ``open()`` and stops when the
   agent's audit record for that path (``file.path``; ``event.action`` "file-scanned" or
   "quarantine") is read from the log, which the bench tails by polling every 1 ms.
   p50/p99/max, by linear interpolation between ranks. Target: p99 <= 50 ms.
2. **A burst** of 10,000 small files (``--burst-files``; 95 % benign text, 5 % disguised),
   200 B to 8 KB, written as fast as possible in chunks of 250, every other chunk in a
   freshly created nested subfolder (``drop-K/a/b``, made just before its files). The
   bench then waits until the agent has logged a record for every file, or
   ``--burst-timeout`` (120 s). Reported: files/s from the first write to the last
   verdict, and files missed (must be 0).
3. **Idle**: nothing happens for ``--idle-s`` (60 s; ``--quick`` 10 s) while the agent's
   CPU (``psutil`` ``cpu_percent`` over the window, and the ``cpu_times`` delta / wall
   time) and RSS (max of 1 s samples) are sampled. Targets: <= 0.1 % CPU, <= 60 MB RSS.

Everything lives in one temporary folder (config, watched folder, vault, log, state, the
agent's rule cache), removed at the end unless ``--keep``. The config is ``mode =
"enforce"``, ``log_clean = true``, ``settle_s = 0.5``, ``sweep_interval_s = 300``, the
rest at guard's defaults; ``--set LINE`` adds a line (e.g. ``launch_control = "off"``).
The agent is always stopped (SIGTERM, then SIGKILL after 10 s). Exit status: 0 when the
agent ran (targets missed or not: this is a report), 1 when it could not be started or
died during the run, 2 when pe32.exe cannot be read.

Run with the Python of the environment where guard is installed; bench/README.md has more.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from agent_proc import Agent, AgentFailed, quantile  # bench/, beside this script

HERE = Path(__file__).resolve()
DEFAULT_CORPUS = HERE.parent / "tests" / "corpus"
PE_REL = Path("executables") / "pe" / "pe32.exe"
KIB, MIB, MB = 1024, 1024 * 1024, 1_000_000
SIZES = (("1 KB", KIB), ("1 MB", MIB), ("10 MB", 10 * MIB))
LATENCY_P99_MS = 50.0
IDLE_CPU_PCT = 0.1
IDLE_RSS_MB = 60.0
DROP_TIMEOUT_S = 10.0
POLL_S = 0.001
VERDICT_ACTIONS = ("file-scanned", "quarantine", "would-quarantine")
BURST_DISGUISED_EVERY = 20          # 1 in 20 = 5 %
BURST_CHUNK = 250                   # files per folder; odd chunks go to a fresh nested folder


# ---------------------------------------------------------------------------------------
# Content
# ---------------------------------------------------------------------------------------

class Content:
    """Deterministic file contents: random-ish text and disguised PE files of any size."""

    def __init__(self, pe: bytes, seed: int):
        self.pe = pe
        rng = random.Random(seed)
        words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 11)))
                 for _ in range(4000)]
        lines, size = [], 0
        while size < 2 * MIB:
            line = " ".join(rng.choices(words, k=rng.randint(3, 16)))
            line = line.capitalize() + rng.choice(".,;:!?") + "\n"
            lines.append(line)
            size += len(line)
        self.text_pool = "".join(lines).encode("ascii")
        self.byte_pool = rng.randbytes(2 * MIB)
        self.rng = rng

    def _fill(self, pool: bytes, n: int) -> bytes:
        """n bytes cut from *pool* at random offsets (fast for 10 MiB)."""
        parts, left = [], n
        while left > 0:
            take = min(left, len(pool) // 2)
            start = self.rng.randrange(0, len(pool) - take + 1)
            parts.append(pool[start:start + take])
            left -= take
        return b"".join(parts)

    def text(self, size: int, tag: str) -> bytes:
        head = f"Notes {tag}\n".encode("ascii")
        return (head + self._fill(self.text_pool, max(0, size - len(head))))[:size]

    def disguised(self, size: int, tag: int) -> bytes:
        """pe32.exe made unique (the tag in its zero tail) and padded to *size*."""
        data = bytearray(self.pe)
        stamp = tag.to_bytes(8, "little")
        if data[-8:] == bytes(8):
            data[-8:] = stamp
        else:
            data += stamp
        if len(data) < size:
            data += self._fill(self.byte_pool, size - len(data))
        return bytes(data)


# ---------------------------------------------------------------------------------------
# The audit log, tailed
# ---------------------------------------------------------------------------------------

class LogTail:
    """Follows the agent's JSON-lines audit log from its current end.

    ``first[path]`` is (monotonic time the line was read, action, trigger) of the first
    verdict record for that path; ``records[path]`` counts all of them. Follows a rotation
    (the old file is read to its end, then the new one from its start).
    """

    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        os.lseek(self.fd, 0, os.SEEK_END)
        self.ino = os.fstat(self.fd).st_ino
        self.buf = b""
        self.lock = threading.Lock()
        self.first: dict[str, tuple[float, str, str]] = {}
        self.records: collections.Counter[str] = collections.Counter()
        self.history: collections.defaultdict[str, list] = collections.defaultdict(list)
        self.actions: collections.Counter[str] = collections.Counter()
        self.errors: list[str] = []
        self.lines = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> int:
        """Read whatever is new; returns the number of complete lines handled."""
        with self.lock:
            n = 0
            while True:
                chunk = os.read(self.fd, 1 << 20)
                if not chunk:
                    break
                now = time.monotonic()
                self.buf += chunk
                *complete, self.buf = self.buf.split(b"\n")
                for line in complete:
                    self._line(line, now)
                n += len(complete)
            if n == 0:
                self._follow_rotation()
            return n

    def _follow_rotation(self) -> None:
        try:
            ino = os.stat(self.path).st_ino
        except FileNotFoundError:
            return
        if ino != self.ino:
            os.close(self.fd)
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            self.ino = os.fstat(self.fd).st_ino
            self.buf = b""

    def _line(self, line: bytes, now: float) -> None:
        if not line.strip():
            return
        self.lines += 1
        try:
            rec = json.loads(line)
        except ValueError:
            self.errors.append(f"unparsable log line: {line[:120]!r}")
            return
        event = rec.get("event") or {}
        action = event.get("action", "?")
        self.actions[action] += 1
        if action == "guard-error" and len(self.errors) < 50:
            self.errors.append(str(rec.get("message", ""))[:300])
        if action in VERDICT_ACTIONS:
            path = (rec.get("file") or {}).get("path")
            if path:
                self.records[path] += 1
                trigger = (rec.get("guard") or {}).get("trigger", "")
                size = (rec.get("file") or {}).get("size")
                self.history[path].append((action, trigger, size))
                if path not in self.first:
                    self.first[path] = (now, action, trigger)

    def wait_for(self, path: str, timeout: float) -> tuple[float, str, str] | None:
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            hit = self.first.get(path)
            if hit is not None:
                return hit
            if time.monotonic() > deadline:
                return None
            time.sleep(POLL_S)

    # background polling, for the burst
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="log-tail", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll()
            time.sleep(POLL_S)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.poll()

    def close(self) -> None:
        os.close(self.fd)


# ---------------------------------------------------------------------------------------
# The agent
# ---------------------------------------------------------------------------------------

def toml_str(value: Any) -> str:
    return json.dumps(str(value))        # a JSON string is a valid TOML basic string


def write_config(base: Path, settle_s: float, sweep_s: float,
                 extra: tuple[str, ...] = ()) -> tuple[Path, dict[str, Path]]:
    paths = {"watch": base / "Downloads", "vault": base / "vault",
             "log": base / "log" / "audit.jsonl", "state": base / "state",
             "allowlist": base / "allowlist.toml", "notify": base / "notifications.jsonl"}
    paths["watch"].mkdir(parents=True)
    cfg = base / "config.toml"
    cfg.write_text(f"""\
mode = "enforce"
quarantine_dir = {toml_str(paths['vault'])}
log_file = {toml_str(paths['log'])}
allowlist = {toml_str(paths['allowlist'])}
state_dir = {toml_str(paths['state'])}
notify = {toml_str('file:' + str(paths['notify']))}
settle_s = {settle_s}
sweep_interval_s = {sweep_s}
log_clean = true
{chr(10).join(extra)}

[[watch]]
path = {toml_str(paths['watch'])}
source = "browser"
""")
    return cfg, paths


def agent_messages(agent: Agent, keep: int = 20) -> list[dict[str, Any]]:
    """The agent's stderr (warnings such as an inotify queue overflow), banner aside,
    grouped: lines that differ only in numbers count as one message."""
    try:
        lines = agent.stderr_path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    groups: dict[str, dict[str, Any]] = {}
    for ln in lines:
        if not ln.strip() or ln.startswith("guard "):
            continue
        key = re.sub(r"\d+", "N", ln.strip())[:120]
        g = groups.setdefault(key, {"count": 0, "first": ln.strip()[:300]})
        g["count"] += 1
    return sorted(groups.values(), key=lambda g: -g["count"])[:keep]


def wait_quiet(agent: Agent, timeout: float = 30.0) -> dict | None:
    """Until the agent's queue is empty and its scanned count held still for 2 s."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    st = None
    while time.monotonic() < deadline:
        agent.check_alive()
        st = agent.status()
        key = (st or {}).get("counters", {}).get("scanned"), (st or {}).get("queue_depth")
        if key != last:
            last, since = key, time.monotonic()
        elif (st or {}).get("queue_depth") == 0 and time.monotonic() - since >= 2.0:
            return st
        time.sleep(0.25)
    return st


# ---------------------------------------------------------------------------------------
# The measurements
# ---------------------------------------------------------------------------------------

def drop(path: Path, data: bytes) -> float:
    """Write *path* with a plain open/write/close; returns the monotonic start time."""
    t0 = time.monotonic()
    with open(path, "wb") as f:
        f.write(data)
    return t0


def measure_latency(agent: Agent, tail: LogTail, watch: Path, content: Content,
                    drops: int) -> list[dict[str, Any]]:
    results = []
    serial = 0
    for label, size in SIZES:
        folder = watch
        samples: list[dict[str, Any]] = []
        benign_paths = []
        for i in range(drops):
            agent.check_alive()
            serial += 1
            disguised = i % 2 == 1
            if disguised:
                path = folder / f"Invoice-{serial}.pdf"
                data = content.disguised(size, serial)
            else:
                path = folder / f"note-{serial}.txt"
                data = content.text(size, str(serial))
                benign_paths.append(path)
            t0 = drop(path, data)
            t_written = time.monotonic()
            hit = tail.wait_for(str(path), DROP_TIMEOUT_S)
            if hit is None:
                samples.append({"path": str(path), "kind": "disguised" if disguised else
                                "benign", "ms": None, "write_ms": (t_written - t0) * 1e3})
                continue
            t_seen, action, trigger = hit
            expected = "quarantine" if disguised else "file-scanned"
            samples.append({"path": str(path), "kind": "disguised" if disguised else "benign",
                            "ms": (t_seen - t0) * 1e3, "write_ms": (t_written - t0) * 1e3,
                            "action": action, "trigger": trigger,
                            "wrong_verdict": action != expected})
        for p in benign_paths:                # keep the watched folder small
            p.unlink(missing_ok=True)
        ok = [s["ms"] for s in samples if s["ms"] is not None]
        by_kind = {}
        for kind in ("benign", "disguised"):
            ks = [s["ms"] for s in samples if s["ms"] is not None and s["kind"] == kind]
            by_kind[kind] = {"n": len(ks), "p50_ms": quantile(ks, 0.5),
                             "p99_ms": quantile(ks, 0.99), "max_ms": max(ks, default=math.nan)}
        results.append({
            "size": label, "bytes": size, "drops": drops, "answered": len(ok),
            "timed_out": drops - len(ok),
            "wrong_verdicts": sum(1 for s in samples if s.get("wrong_verdict")),
            "p50_ms": quantile(ok, 0.5), "p99_ms": quantile(ok, 0.99),
            "max_ms": max(ok, default=math.nan), "min_ms": min(ok, default=math.nan),
            "write_p50_ms": quantile([s["write_ms"] for s in samples], 0.5),
            "by_kind": by_kind,
            "triggers": dict(collections.Counter(s.get("trigger", "none") for s in samples)),
            "samples_ms": [None if s["ms"] is None else round(s["ms"], 3) for s in samples],
        })
        print(f"  latency {label}: p50 {results[-1]['p50_ms']:.1f} ms, "
              f"p99 {results[-1]['p99_ms']:.1f} ms, max {results[-1]['max_ms']:.1f} ms",
              file=sys.stderr)
    return results


def measure_burst(agent: Agent, tail: LogTail, watch: Path, content: Content, n: int,
                  timeout: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed + 1)
    root = watch
    plan: list[tuple[Path, bytes, bool, bool]] = []    # path, data, disguised, nested
    chunks = math.ceil(n / BURST_CHUNK)
    k = 0
    for c in range(chunks):
        nested = c % 2 == 1
        folder = root / f"drop-{c:03d}" / "a" / "b" if nested else root
        for _ in range(min(BURST_CHUNK, n - k)):
            k += 1
            if k % BURST_DISGUISED_EVERY == 0:
                plan.append((folder / f"Invoice-{k:05d}.pdf",
                             content.disguised(KIB + rng.randint(0, 3000), 1_000_000 + k),
                             True, nested))
            else:
                size = int(math.exp(rng.uniform(math.log(200), math.log(8000))))
                plan.append((folder / f"notes-{k:05d}.txt", content.text(size, f"b{k}"),
                             False, nested))
    made: set[Path] = set()
    tail.start()
    t_first = time.monotonic()
    for path, data, _d, nested in plan:
        if nested and path.parent not in made:
            path.parent.mkdir(parents=True)
            made.add(path.parent)
        with open(path, "wb") as f:
            f.write(data)
    t_written = time.monotonic()
    print(f"  burst: {n} files written in {t_written - t_first:.2f} s; waiting for verdicts",
          file=sys.stderr)
    wanted = {str(p) for p, *_ in plan}
    deadline = t_written + timeout
    last_report = time.monotonic()
    while time.monotonic() < deadline:
        with tail.lock:
            seen = len(wanted.intersection(tail.first))
        if seen >= n:
            break
        if not agent.alive():
            break
        if time.monotonic() - last_report > 10:
            last_report = time.monotonic()
            st = agent.status() or {}
            print(f"    {seen}/{n} verdicts; agent queue {st.get('queue_depth')}, "
                  f"counters {st.get('counters')}", file=sys.stderr)
        time.sleep(0.05)
    tail.stop()
    agent.check_alive()
    first = tail.first
    got = [first[p][0] for p in wanted if p in first]
    missed = sorted(p for p in wanted if p not in first)
    t_last = max(got, default=t_written)
    wrong = [str(p) for p, _data, disg, _n in plan if str(p) in first and
             first[str(p)][1] != ("quarantine" if disg else "file-scanned")]
    nested_missed = sum(1 for p, _data, _d, nested in plan if nested and str(p) in missed)
    dups = [p for p in wanted if tail.records[p] > 1]
    dup = len(dups)
    sizes = {str(p): len(d) for p, d, *_x in plan}
    partial = [p for p in wanted if any(sz is not None and sz != sizes[p]
                                        for _a, _t, sz in tail.history.get(p, ()))]
    elapsed = t_last - t_first
    return {
        "files": n, "disguised": sum(1 for *_x, d, _n in plan if d),
        "nested": sum(1 for *_x, nest in plan if nest), "fresh_folders": len(made),
        "bytes": sum(len(d) for _p, d, *_x in plan),
        "write_s": t_written - t_first, "elapsed_s": elapsed,
        "files_per_s": len(got) / elapsed if elapsed > 0 else math.nan,
        "answered": len(got), "missed": len(missed), "missed_nested": nested_missed,
        "missed_sample": missed[:20], "wrong_verdicts": len(wrong), "wrong_sample": wrong[:20],
        "duplicate_records": dup,
        "duplicate_sample": {p: tail.history[p] for p in dups[:10]},
        "partial_scans": len(partial),
        "partial_sample": {p: tail.history[p] for p in partial[:10]},
        "triggers": dict(collections.Counter(first[p][2] for p in wanted if p in first)),
        "timeout_s": timeout,
    }


def create_baseline(folder: Path, n: int = 1000) -> float:
    """µs to create and write one small file in an unwatched folder (the filesystem's own
    cost, before the agent adds anything)."""
    folder.mkdir()
    data = b"x" * 2000
    t0 = time.monotonic()
    for i in range(n):
        with open(folder / f"f{i}.txt", "wb") as f:
            f.write(data)
    return (time.monotonic() - t0) / n * 1e6


def _task_cpu_ns(pid: int) -> int | None:
    """Sum of the agent's threads' on-CPU time (schedstat, ns resolution)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total


def _tree_rss(proc) -> int:
    """RSS of the agent and its children (the parser workers)."""
    import psutil
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


def _children_cpu(proc) -> dict[int, float]:
    """CPU seconds of each live child, by pid."""
    import psutil
    out = {}
    for child in proc.children(recursive=True):
        try:
            t = child.cpu_times()
            out[child.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def measure_idle(agent: Agent, seconds: float) -> dict[str, Any]:
    import psutil
    assert agent.proc is not None
    proc = psutil.Process(agent.proc.pid)
    before = agent.status() or {}
    proc.cpu_percent(None)                      # primes the interval
    ct0 = proc.cpu_times()
    ns0 = _task_cpu_ns(proc.pid)
    t0 = time.monotonic()
    rss = [proc.memory_info().rss]
    tree = [_tree_rss(proc)]
    kids0 = _children_cpu(proc)
    threads = proc.num_threads()
    end = t0 + seconds
    while True:
        left = end - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(1.0, left))
        agent.check_alive()
        rss.append(proc.memory_info().rss)
        tree.append(_tree_rss(proc))
    pct = proc.cpu_percent(None)
    ct1 = proc.cpu_times()
    kids1 = _children_cpu(proc)
    ns1 = _task_cpu_ns(proc.pid)
    wall = time.monotonic() - t0
    after = agent.status() or {}
    cpu_s = (ct1.user - ct0.user) + (ct1.system - ct0.system)
    c0, c1 = before.get("counters", {}), after.get("counters", {})
    return {
        "seconds": wall, "cpu_percent_psutil": pct,
        "cpu_percent_times": 100.0 * cpu_s / wall, "cpu_s": cpu_s,
        "cpu_percent_schedstat": (100.0 * (ns1 - ns0) / 1e9 / wall)
        if ns0 is not None and ns1 is not None else None,
        "rss_max_mb": max(rss) / MB, "rss_min_mb": min(rss) / MB, "samples": len(rss),
        # with the parser workers (they exit parser_idle_s after their last file)
        "tree_rss_max_mb": max(tree) / MB, "tree_rss_end_mb": tree[-1] / MB,
        "tree_cpu_s": cpu_s + (ct1.children_user + ct1.children_system
                               - ct0.children_user - ct0.children_system)
        + sum(max(0.0, v - kids0.get(k, 0.0)) for k, v in kids1.items()),
        "threads": threads,
        "sweeps_during": c1.get("sweeps", 0) - c0.get("sweeps", 0),
        "scanned_during": c1.get("scanned", 0) - c0.get("scanned", 0),
    }


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------

def fs_type(path: Path) -> str:
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mnt = parts[1]
                if str(path).startswith(mnt.rstrip("/") + "/") or str(path) == mnt:
                    if len(mnt) >= len(best):
                        best, kind = mnt, parts[2]
    except OSError:
        pass
    return kind


def warm_memory(mb: int) -> dict[str, Any]:
    """Touch *mb* MB of fresh memory once and give it back.

    In a VM the first touch of a guest page the host never backed costs a trap to the
    hypervisor: measured here, writing 10 MB into the page cache takes ~20 ms on untouched
    memory and ~1.6 ms on memory touched before. A laptop that has been up for a while has
    no such pages, so the bench touches (at most) what the run will need before it starts;
    the kernel hands freed pages out again first. Reported in the header; --warm-mb 0 skips.
    """
    if mb <= 0:
        return {"mb": 0, "s": 0.0}
    import mmap
    avail = 0
    try:
        avail = next(int(ln.split()[1]) // 1024 for ln in open("/proc/meminfo")
                     if ln.startswith("MemAvailable"))
    except (OSError, StopIteration, ValueError):
        pass
    mb = min(mb, avail // 4) if avail else mb
    started = time.monotonic()
    size = mb * MIB
    m = mmap.mmap(-1, size)
    try:
        page = mmap.PAGESIZE
        for off in range(0, size, page):
            m[off] = 1
    finally:
        m.close()
    return {"mb": mb, "s": round(time.monotonic() - started, 2)}


def machine_info(tmp: Path) -> dict[str, Any]:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    try:
        mem = next(int(ln.split()[1]) * 1024 for ln in open("/proc/meminfo")
                   if ln.startswith("MemTotal"))
    except (OSError, StopIteration, ValueError):
        mem = 0
    try:
        from importlib.metadata import version
        watchdog_v = version("watchdog")
    except Exception:
        watchdog_v = "?"
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "memory_gb": round(mem / 1e9, 1),
        "python": f"{platform.python_implementation()} {platform.python_version()} "
                  f"({sys.executable})",
        "kernel": f"{platform.system()} {platform.release()}",
        "os": platform.platform(), "watchdog": watchdog_v,
        "tmp_fs": f"{tmp} ({fs_type(tmp)})",
    }


def source_info() -> dict[str, Any]:
    """Which guard was measured: the repo's commit and its uncommitted changes under guard/."""
    repo = HERE.parents[1]

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(repo), *a], capture_output=True,
                                  text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    changed = [ln[3:] for ln in git("status", "--porcelain", "--", "guard").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD") or "?", "uncommitted_guard_files":
            changed}


def fmt_ms(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}"


def build_rows(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    for lat in res.get("latency", []):
        ok = lat["timed_out"] == 0 and lat["p99_ms"] <= LATENCY_P99_MS
        extra = f" ({lat['timed_out']} timed out)" if lat["timed_out"] else ""
        if lat["wrong_verdicts"]:
            extra += f" ({lat['wrong_verdicts']} wrong verdicts)"
        rows.append((f"drop-to-verdict {lat['size']} (n={lat['drops']}), p50 / p99 / max ms",
                     f"{fmt_ms(lat['p50_ms'])} / {fmt_ms(lat['p99_ms'])} / "
                     f"{fmt_ms(lat['max_ms'])}{extra}",
                     f"p99 <= {LATENCY_P99_MS:.0f} ms", "PASS" if ok else "MISS"))
    b = res.get("burst")
    if b:
        rows.append((f"burst {b['files']} files: throughput, first write to last verdict",
                     f"{b['files_per_s']:.0f} files/s ({b['elapsed_s']:.1f} s; written in "
                     f"{b['write_s']:.1f} s)", "—", "info"))
        extra = f", {b['wrong_verdicts']} wrong verdicts" if b["wrong_verdicts"] else ""
        rows.append((f"burst {b['files']} files: missed (no verdict in {b['timeout_s']:.0f} s)",
                     f"{b['missed']} ({b['missed_nested']} in new subfolders){extra}", "0",
                     "PASS" if b["missed"] == 0 and not b["wrong_verdicts"] else "MISS"))
    idle = res.get("idle")
    if idle:
        cpu = idle["cpu_percent_times"]
        sched = idle.get("cpu_percent_schedstat")
        rows.append((f"idle CPU over {idle['seconds']:.0f} s (cpu_times / cpu_percent"
                     f"{' / schedstat' if sched is not None else ''})",
                     f"{cpu:.3f} % / {idle['cpu_percent_psutil']:.3f} %"
                     + (f" / {sched:.3f} %" if sched is not None else ""),
                     f"<= {IDLE_CPU_PCT} %",
                     "PASS" if max(cpu, idle["cpu_percent_psutil"]) <= IDLE_CPU_PCT
                     else "MISS"))
        rows.append(("idle RSS, max of samples",
                     f"{idle['rss_max_mb']:.1f} MB", f"<= {IDLE_RSS_MB:.0f} MB",
                     "PASS" if idle["rss_max_mb"] <= IDLE_RSS_MB else "MISS"))
        if "tree_rss_max_mb" in idle:
            rows.append(("  with parser workers: RSS max / at end, CPU",
                         f"{idle['tree_rss_max_mb']:.1f} / {idle['tree_rss_end_mb']:.1f} MB, "
                         f"{100.0 * idle['tree_cpu_s'] / idle['seconds']:.3f} %",
                         "(workers exit after parser_idle_s)", ""))
    return rows


def print_report(res: dict[str, Any]) -> None:
    m = res["machine"]
    print(f"guard agent benchmark ({'quick' if res['quick'] else 'full'} run), "
          f"guard {res.get('guard_version', '?')}")
    print(f"machine: nproc {m['nproc']}, {m['cpu']}, {m['memory_gb']} GB; {m['python']}; "
          f"kernel {m['kernel']}; watchdog {m['watchdog']}; temp {m['tmp_fs']}"
          + (f", {m['create_us']:.0f} µs to create a small file there (no agent)"
             if m.get("create_us") else "")
          + (f"; {m['warm']['mb']} MB of memory touched first ({m['warm']['s']:.1f} s)"
             if (m.get("warm") or {}).get("mb") else "; memory not pre-touched"))
    src = res.get("source") or {}
    dirty = src.get("uncommitted_guard_files") or []
    print(f"source: commit {src.get('commit', '?')}"
          + (f" + {len(dirty)} uncommitted files under guard/" if dirty else ""))
    lc = res.get("launch_control")
    extra = "".join(f", {e}" for e in res["config"].get("extra", []))
    print(f"agent: settle_s {res['config']['settle_s']}, sweep_interval_s "
          f"{res['config']['sweep_interval_s']}, log_clean, enforce{extra}"
          + (f", launch control {lc.get('backend', lc) if isinstance(lc, dict) else lc}"
             if lc else "") + "; ready in "
          f"{res.get('startup_s', math.nan):.2f} s, RSS at start "
          f"{res.get('rss_start_mb', math.nan):.1f} MB")
    print()
    rows = build_rows(res)
    head = ("measure", "measured", "target", "")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()
    print(line)
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print()
    b = res.get("burst")
    if b:
        print(f"burst detail: {b['disguised']} disguised, {b['nested']} files in "
              f"{b['fresh_folders']} new nested folders, {b['duplicate_records']} files "
              f"logged more than once, {b['partial_scans']} scanned while incomplete, "
              f"first-verdict triggers {b['triggers']}")
    idle = res.get("idle")
    if idle:
        print(f"idle detail: {idle['threads']} threads, RSS {idle['rss_min_mb']:.1f}..."
              f"{idle['rss_max_mb']:.1f} MB over {idle['samples']} samples, "
              f"{idle['sweeps_during']} sweeps and {idle['scanned_during']} scans in the window")
    if res.get("rss_mb"):
        print("agent RSS by phase: " + ", ".join(f"{k} {v:.1f} MB"
                                                  for k, v in res["rss_mb"].items()))
    st = res.get("final_status") or {}
    if st:
        print(f"agent counters at the end: {st.get('counters')}")
    if res.get("log_errors"):
        print(f"agent errors in the log ({len(res['log_errors'])}):")
        for e in res["log_errors"][:10]:
            print(f"  {e}")
    if res.get("agent_stderr"):
        print("agent stderr (lines alike but for numbers counted together):")
        for g in res["agent_stderr"][:10]:
            print(f"  {g['count']:5d} x {g['first'][:150]}")
    if res.get("stop"):
        print(f"agent stop: {res['stop']}")
    if res.get("error"):
        print(f"ERROR: {res['error']}")


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark the guard agent (guard run): "
                                "drop-to-verdict latency, a 10k-file burst, idle cost.")
    p.add_argument("--quick", action="store_true",
                   help="10 drops per size and a 10 s idle window")
    p.add_argument("--drops", type=int, help="drops per size (default 50; --quick 10)")
    p.add_argument("--burst-files", type=int, default=10_000, help="files in the burst")
    p.add_argument("--burst-timeout", type=float, default=120.0,
                   help="seconds to wait for the burst's verdicts after the last write")
    p.add_argument("--idle-s", type=float, help="idle window, seconds (default 60; --quick 10)")
    p.add_argument("--settle-s", type=float, default=0.5, help="the agent's settle_s")
    p.add_argument("--sweep-interval-s", type=float, default=300.0,
                   help="the agent's sweep_interval_s")
    p.add_argument("--set", action="append", default=[], metavar="LINE",
                   help="an extra top-level config line (TOML), e.g. --set "
                        "'launch_control = \"off\"'; repeatable")
    p.add_argument("--skip", default="", help="comma list of phases to skip: latency,burst,idle")
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS,
                   help="the test corpus (pe32.exe comes from it)")
    p.add_argument("--tmpdir", type=Path, help="where to make the temporary folder")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--warm-mb", type=int, default=1024,
                   help="MB of memory to touch before the run (VM first-touch cost); 0 skips")
    p.add_argument("--seed", type=int, default=1, help="seed of the generated contents")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    a = p.parse_args(argv)
    a.drops = a.drops or (10 if a.quick else 50)
    a.idle_s = a.idle_s if a.idle_s is not None else (10.0 if a.quick else 60.0)
    a.skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    return a


def _on_sigterm(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pe_path = args.corpus / PE_REL
    try:
        pe = pe_path.read_bytes()
    except OSError as exc:
        print(f"bench_daemon: cannot read {pe_path}: {exc.strerror}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_sigterm)
    tmp = Path(tempfile.mkdtemp(prefix="guard-bench-daemon-", dir=args.tmpdir))
    res: dict[str, Any] = {"quick": args.quick, "machine": machine_info(tmp),
                           "source": source_info(),
                           "config": {"settle_s": args.settle_s,
                                      "sweep_interval_s": args.sweep_interval_s,
                                      "extra": list(args.set)}}
    code = 0
    agent: Agent | None = None
    tail: LogTail | None = None
    try:
        content = Content(pe, args.seed)
        res["machine"]["warm"] = warm_memory(args.warm_mb)
        res["machine"]["create_us"] = create_baseline(tmp / "unwatched")
        cfg, paths = write_config(tmp, args.settle_s, args.sweep_interval_s, tuple(args.set))
        agent = Agent(tmp, cfg, paths["state"] / "status.json")
        print(f"starting the agent in {tmp}", file=sys.stderr)
        res["startup_s"] = agent.start()
        st = agent.status() or {}
        res["guard_version"] = st.get("version")
        res["launch_control"] = st.get("launch_control")
        import psutil
        agent_ps = psutil.Process(agent.proc.pid)
        res["rss_mb"] = {"start": agent_ps.memory_info().rss / MB}
        res["rss_start_mb"] = res["rss_mb"]["start"]
        tail = LogTail(paths["log"])
        if "latency" not in args.skip:
            print(f"latency: {args.drops} drops per size", file=sys.stderr)
            res["latency"] = measure_latency(agent, tail, paths["watch"], content, args.drops)
            res["rss_mb"]["after_latency"] = agent_ps.memory_info().rss / MB
        if "burst" not in args.skip:
            print(f"burst: {args.burst_files} files", file=sys.stderr)
            res["burst"] = measure_burst(agent, tail, paths["watch"], content,
                                         args.burst_files, args.burst_timeout, args.seed)
            res["rss_mb"]["after_burst"] = agent_ps.memory_info().rss / MB
        if "idle" not in args.skip:
            wait_quiet(agent)
            print(f"idle: sampling for {args.idle_s:.0f} s", file=sys.stderr)
            res["idle"] = measure_idle(agent, args.idle_s)
        if "idle" in args.skip:
            wait_quiet(agent, 15)
        time.sleep(1.2)                   # status.json is rewritten every second
        res["final_status"] = agent.status()
        tail.poll()
        res["log_errors"] = tail.errors
        res["log_actions"] = dict(tail.actions)
    except AgentFailed as exc:
        res["error"] = str(exc)
        code = 1
    except KeyboardInterrupt:
        res["error"] = "interrupted"
        code = 130
    finally:
        if agent is not None:
            agent.stop()
            res["stop"] = agent.stop_info
            res["agent_stderr"] = agent_messages(agent)
        if tail is not None:
            tail.close()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(res, indent=1, default=str))
    else:
        print_report(res)
    return code


if __name__ == "__main__":
    sys.exit(main())
