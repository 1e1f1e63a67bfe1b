#!/usr/bin/env python3
"""Launch-control benchmark: what guard adds to every exec, and how fast the portable
monitor stops a forbidden launch. One run prints one table.

1. **Added latency per exec of an allowed program.** A copy of ``/bin/true`` goes into a
   folder that will be marked (the "watched" folder, ``W/true``) and into one that is
   never marked (``U/true``). Each is run ``--execs`` times (1000; ``--quick`` 200) after
   ``--warmup`` runs (50), one exec at a time, with ``os.posix_spawn`` + ``os.waitpid``
   and ``time.perf_counter_ns`` around the pair. The two programs alternate (ABBA order,
   so drift and any order effect hit both alike). Reported per case: median and p99 of
   each folder and the added median (marked minus unmarked). Three cases, in order:

   * ``no agent``: nothing marks anything; the added median is the noise of the method.
   * ``bare responder``: a minimal fanotify responder in a child process (this script
     with ``--bare-responder DIR``): ctypes ``fanotify_init(FAN_CLASS_CONTENT)``, one mark
     ``FAN_OPEN_EXEC_PERM | FAN_OPEN_PERM | FAN_EVENT_ON_CHILD`` on W, a thread that
     reads events and answers ``FAN_ALLOW`` at once. Its added median is the floor for a
     Python responder.
   * ``guard``: the real agent (``python -m guard run``) with ``launch_control =
     "fanotify"`` watching W, and ``W/true`` allowlisted with ``guard allow add`` (the
     bench waits until status.json shows the entry). Target: added median <= 0.05 ms.

   The responders run in their own processes: CPython's ``os.posix_spawn`` does not
   release the GIL, so a responder thread inside the bench would deadlock with it.

2. **Time to stop a forbidden launch under the portable monitor**: the agent with
   ``launch_control = "monitor"``, ``process_poll_s = 0.1``, enforce mode. ``sh
   W/loop.sh`` (a script that sleeps 30 s) is started ``--kills`` times (20; ``--quick``
   5); the clock runs from just before ``Popen`` until ``waitpid`` reports the shell dead.
   Before each launch the bench waits until the agent has quarantined the previous
   ``loop.sh`` (the follow-up of a denied launch), writes a fresh one, lets the agent's
   file scan of it settle and then waits a random 0-2 poll intervals (seeded), so the
   launches fall at random points of the poll cycle. Reported: median, p95, max.
   Target: max <= 150 ms (every forbidden launch gone within 150 ms).

Only folders this bench creates in its temporary folder are marked or watched. Every
process it starts (agent, responder, shells and their ``sleep``) is stopped in
``finally`` blocks (agent: SIGTERM, SIGKILL after 10 s), and the temporary folder is
removed unless ``--keep``. Exit status 0 when the run completed, whether the targets were
met or not (it is a report); 1 when the agent could not be started or died.

Run it as root (fanotify permission events need CAP_SYS_ADMIN) with the Python of the
environment where guard is installed; bench/README.md has more.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import math
import os
import platform
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from agent_proc import (STOP_GRACE_S, Agent, BenchError, quantile,  # bench/, beside this
                        wait_until)                                # script

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
ADDED_MEDIAN_TARGET_MS = 0.05
KILL_TARGET_MS = 150.0
KILL_TIMEOUT_S = 5.0          # a shell still alive after this counts as "not stopped"
POLL_S = 0.1

# fanotify (as in guard/sources/fanotify.py)
FAN_CLOEXEC = 0x00000001
FAN_CLASS_CONTENT = 0x00000004
FAN_MARK_ADD = 0x00000001
FAN_MARK_DONT_FOLLOW = 0x00000004
FAN_MARK_ONLYDIR = 0x00000008
FAN_OPEN_PERM = 0x00010000
FAN_OPEN_EXEC_PERM = 0x00040000
FAN_EVENT_ON_CHILD = 0x08000000
FAN_ALLOW = 0x01
AT_FDCWD = -100
META = struct.Struct("=IBBHQii")
RESPONSE = struct.Struct("=iI")


# ---------------------------------------------------------------------------------------
# The bare responder (run as a child: bench_launch.py --bare-responder DIR)
# ---------------------------------------------------------------------------------------

def bare_responder(folder: str) -> int:
    """Mark *folder*, print "ready", answer FAN_ALLOW to everything until stdin closes,
    then print the event count as JSON."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
    libc.fanotify_init.restype = ctypes.c_int
    libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                                   ctypes.c_char_p]
    libc.fanotify_mark.restype = ctypes.c_int
    fd = libc.fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC,
                            os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC)
    if fd < 0:
        print(json.dumps({"error": f"fanotify_init: {os.strerror(ctypes.get_errno())}"}),
              flush=True)
        return 1
    r = libc.fanotify_mark(fd, FAN_MARK_ADD | FAN_MARK_DONT_FOLLOW | FAN_MARK_ONLYDIR,
                           FAN_OPEN_EXEC_PERM | FAN_OPEN_PERM | FAN_EVENT_ON_CHILD,
                           AT_FDCWD, os.fsencode(folder))
    if r < 0:
        print(json.dumps({"error": f"fanotify_mark: {os.strerror(ctypes.get_errno())}"}),
              flush=True)
        return 1
    counts = {"events": 0, "exec": 0, "open": 0}

    def loop() -> None:
        while True:
            buf = os.read(fd, 64 * 1024)          # blocking: the GIL is released meanwhile
            pos = 0
            while pos + META.size <= len(buf):
                event_len, _v, _r, _m, mask, efd, _pid = META.unpack_from(buf, pos)
                if event_len < META.size:
                    break
                pos += event_len
                if efd < 0:
                    continue
                os.write(fd, RESPONSE.pack(efd, FAN_ALLOW))
                os.close(efd)
                counts["events"] += 1
                counts["exec" if mask & FAN_OPEN_EXEC_PERM else "open"] += 1

    threading.Thread(target=loop, name="bare-responder", daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()                               # until the bench closes our stdin
    print(json.dumps(counts), flush=True)
    return 0                                       # closing fd allows anything pending


class BareResponder:
    def __init__(self, folder: Path):
        self.folder = folder
        self.proc: subprocess.Popen | None = None
        self.counts: dict[str, Any] = {}

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE), "--bare-responder", str(self.folder)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise BenchError(f"bare responder did not start: {line or '(no output)'}")

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self.proc.stdin.close()
                try:
                    out = self.proc.stdout.read()
                    self.proc.wait(STOP_GRACE_S)
                    self.counts = json.loads(out.strip().splitlines()[-1]) if out.strip() \
                        else {}
                except (subprocess.TimeoutExpired, ValueError):
                    pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            for s in (self.proc.stdin, self.proc.stdout):
                try:
                    s.close()
                except (OSError, ValueError):
                    pass


# ---------------------------------------------------------------------------------------
# The agent
# ---------------------------------------------------------------------------------------

def toml_str(value: Any) -> str:
    return json.dumps(str(value))        # a JSON string is a valid TOML basic string


def write_config(base: Path, watch: Path, launch_control: str, poll_s: float) -> Path:
    cfg = base / "config.toml"
    cfg.write_text(f"""\
mode = "enforce"
quarantine_dir = {toml_str(base / 'vault')}
log_file = {toml_str(base / 'log' / 'audit.jsonl')}
allowlist = {toml_str(base / 'allowlist.toml')}
state_dir = {toml_str(base / 'state')}
notify = {toml_str('file:' + str(base / 'notifications.jsonl'))}
settle_s = 0.3
sweep_interval_s = 600
launch_control = "{launch_control}"
process_poll_s = {poll_s}

[[watch]]
path = {toml_str(watch)}
source = "browser"
""")
    return cfg


def wait_quiet(agent: Agent, window_s: float = 0.5, max_cpu: float = 0.02,
               timeout: float = 15.0) -> float:
    """Wait until the agent uses under *max_cpu* of a core over *window_s* (its start-up
    sweep and scans are done); returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        c0 = agent.cpu_s()
        time.sleep(window_s)
        if math.isnan(c0) or (agent.cpu_s() - c0) / window_s < max_cpu:
            break
    return round(time.monotonic() - t0, 2)


# ---------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------

def spawn_once(path: str, argv: list[str], env: dict[str, str]) -> tuple[int, int]:
    """(ns for posix_spawn + waitpid, exit code); a denied exec raises PermissionError."""
    t0 = time.perf_counter_ns()
    pid = os.posix_spawn(path, argv, env)
    _, status = os.waitpid(pid, 0)
    t1 = time.perf_counter_ns()
    return t1 - t0, os.waitstatus_to_exitcode(status)


def time_execs(marked: Path, unmarked: Path, n: int, warmup: int) -> dict[str, Any]:
    """Run both programs n times each, interleaved ABBA, after *warmup* runs of each."""
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    progs = {"marked": str(marked), "unmarked": str(unmarked)}
    times: dict[str, list[float]] = {"marked": [], "unmarked": []}
    failures = {"marked": 0, "unmarked": 0}
    errors: list[str] = []
    for i in range(warmup + n):
        order = ("marked", "unmarked") if i % 2 == 0 else ("unmarked", "marked")
        for key in order:
            try:
                ns, code = spawn_once(progs[key], [progs[key]], env)
            except OSError as exc:
                failures[key] += 1
                if len(errors) < 5:
                    errors.append(f"{key}: {type(exc).__name__}: {exc}")
                continue
            if code != 0:
                failures[key] += 1
                continue
            if i >= warmup:
                times[key].append(ns / 1e6)
    out: dict[str, Any] = {"n": n, "warmup": warmup, "failures": failures, "errors": errors}
    for key, vals in times.items():
        out[key] = {"median_ms": quantile(vals, 0.5), "p99_ms": quantile(vals, 0.99),
                    "min_ms": min(vals) if vals else math.nan,
                    "max_ms": max(vals) if vals else math.nan, "count": len(vals)}
    out["added_median_ms"] = out["marked"]["median_ms"] - out["unmarked"]["median_ms"]
    out["added_p99_ms"] = out["marked"]["p99_ms"] - out["unmarked"]["p99_ms"]
    return out


def launch_fields(st: dict | None) -> dict[str, Any]:
    return dict((st or {}).get("launch_control") or {})


def measure_guard_fanotify(base: Path, watch: Path, marked: Path, unmarked: Path,
                           n: int, warmup: int) -> dict[str, Any]:
    cfg = write_config(base, watch, "fanotify", POLL_S)
    agent = Agent(base, cfg, base / "state" / "status.json", "fanotify")
    res: dict[str, Any] = {}
    try:
        print("guard (fanotify): starting the agent", file=sys.stderr)
        res["startup_s"] = round(agent.start(), 3)
        lc = launch_fields(agent.status())
        res["backend"] = lc.get("backend")
        res["marked_folders"] = lc.get("marked_folders")
        if lc.get("backend") != "fanotify":
            raise BenchError(f"agent's launch control is {lc.get('backend')!r}, not fanotify: "
                             f"{lc.get('why')}")
        before = (agent.status() or {}).get("allowlist", {}).get("entries", 0)
        r = agent.cli("allow", "add", str(marked), "--reason", "bench_launch")
        if r.returncode != 0:
            raise BenchError(f"guard allow add failed ({r.returncode}): {r.stderr.strip()}")
        t0 = time.monotonic()
        ok = wait_until(lambda: (agent.status() or {}).get("allowlist", {}).get("entries", 0)
                        > before, 10)
        if not ok:
            raise BenchError("the agent's status never showed the allowlist entry")
        res["allowlist_reload_s"] = round(time.monotonic() - t0, 3)
        res["quiet_wait_s"] = wait_quiet(agent)
        agent.check_alive()
        print(f"guard (fanotify): {warmup}+{n} execs per folder", file=sys.stderr)
        st0, cpu0 = agent.status(), agent.cpu_s()
        res.update(time_execs(marked, unmarked, n, warmup))
        cpu1 = agent.cpu_s()
        time.sleep(1.2)                      # status.json is rewritten about once a second
        st1 = agent.status()
        agent.check_alive()
        l0, l1 = launch_fields(st0), launch_fields(st1)
        f0, f1 = l0.get("fanotify") or {}, l1.get("fanotify") or {}
        execs = n + warmup                    # execs of the marked program
        res["agent"] = {
            "fanotify_events": f1.get("events", 0) - f0.get("events", 0),
            "cached": l1.get("cached", 0) - l0.get("cached", 0),
            "decisions": l1.get("decisions", 0) - l0.get("decisions", 0),
            "denied": l1.get("denied", 0) - l0.get("denied", 0),
            "timeouts": f1.get("timeouts", 0) - f0.get("timeouts", 0),
            "errors": f1.get("errors", 0) - f0.get("errors", 0),
            "cpu_s": cpu1 - cpu0, "execs_marked": execs}
        res["agent"]["events_per_exec"] = res["agent"]["fanotify_events"] / execs
        res["agent"]["cpu_us_per_exec"] = (cpu1 - cpu0) / execs * 1e6
    finally:
        agent.stop()
        res["stop"] = agent.stop_info
    return res


def measure_monitor(base: Path, watch: Path, kills: int, poll_s: float,
                    seed: int) -> dict[str, Any]:
    cfg = write_config(base, watch, "monitor", poll_s)
    agent = Agent(base, cfg, base / "state" / "status.json", "monitor")
    script = watch / "loop.sh"
    rng = random.Random(seed)
    res: dict[str, Any] = {"n": kills, "poll_s": poll_s, "launches": []}
    live: list[subprocess.Popen] = []
    try:
        print("monitor: starting the agent", file=sys.stderr)
        res["startup_s"] = round(agent.start(), 3)
        res["quiet_wait_s"] = wait_quiet(agent)
        lc = launch_fields(agent.status())
        res["backend"] = lc.get("backend")
        if lc.get("backend") != "monitor":
            raise BenchError(f"agent's launch control is {lc.get('backend')!r}, not monitor")
        print(f"monitor: {kills} launches of sh {script}", file=sys.stderr)
        for i in range(kills):
            agent.check_alive()
            # the previous loop.sh is quarantined after its denial: wait, then write anew
            wait_until(lambda: not script.exists(), KILL_TIMEOUT_S)
            script.write_text("sleep 30\n")
            time.sleep(0.6)                               # the agent's scan (settle 0.3 s)
            time.sleep(rng.uniform(0, 2 * poll_s))        # a random point of the poll cycle
            timed_out = threading.Event()
            t0 = time.perf_counter_ns()
            p = subprocess.Popen(["sh", str(script)], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
            live.append(p)

            def expire(p: subprocess.Popen = p) -> None:
                timed_out.set()
                _killpg(p.pid)

            timer = threading.Timer(KILL_TIMEOUT_S, expire)
            timer.start()
            try:
                _, status = os.waitpid(p.pid, 0)
                t1 = time.perf_counter_ns()
            finally:
                timer.cancel()
            p.returncode = os.waitstatus_to_exitcode(status)
            _killpg(p.pid)                   # the shell's `sleep 30`, orphaned by the kill
            live.remove(p)
            res["launches"].append({
                "ms": (t1 - t0) / 1e6, "returncode": p.returncode,
                "stopped_by_agent": p.returncode == -signal.SIGKILL and not timed_out.is_set(),
                "timed_out": timed_out.is_set()})
        stopped = [x["ms"] for x in res["launches"] if x["stopped_by_agent"]]
        res["stopped"] = len(stopped)
        res["not_stopped"] = kills - len(stopped)
        res["median_ms"] = quantile(stopped, 0.5)
        res["p95_ms"] = quantile(stopped, 0.95)
        res["max_ms"] = max(stopped) if stopped else math.nan
        res["min_ms"] = min(stopped) if stopped else math.nan
        time.sleep(1.2)
        lc = launch_fields(agent.status())
        res["agent"] = {k: lc.get(k) for k in ("denied", "allowed", "decisions", "cached")}
        res["vault_files"] = len(list((base / "vault").rglob("*"))) if \
            (base / "vault").exists() else 0
    finally:
        for p in live:
            _killpg(p.pid)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        agent.stop()
        res["stop"] = agent.stop_info
    return res


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------

def fs_type(path: Path) -> str:
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and str(path).startswith(parts[1]) and \
                        len(parts[1]) >= len(best):
                    best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


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
        gov = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    except OSError:
        gov = "n/a"
    try:
        import psutil
        psutil_v = psutil.__version__
    except ImportError:
        psutil_v = "missing"
    fan_ok, fan_why = fanotify_available()
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory_gb": round(mem / 1e9, 1),
            "cpufreq_governor": gov,
            "python": f"{platform.python_implementation()} {platform.python_version()} "
                      f"({sys.executable})",
            "kernel": f"{platform.system()} {platform.release()}", "os": platform.platform(),
            "psutil": psutil_v, "tmp_fs": f"{tmp} ({fs_type(tmp)})",
            "euid": os.geteuid() if hasattr(os, "geteuid") else None,
            "loadavg_start": _loadavg(),
            "fanotify": fan_why if fan_ok else f"unavailable: {fan_why}"}


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def fanotify_available() -> tuple[bool, str]:
    try:
        from guard.sources import fanotify
        return fanotify.available()
    except Exception as exc:                      # guard not importable, not Linux, ...
        return False, f"{type(exc).__name__}: {exc}"


def source_info() -> dict[str, Any]:
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(REPO), *a], capture_output=True,
                                  text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    changed = [ln[3:] for ln in git("status", "--porcelain", "--", "guard").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD") or "?",
            "uncommitted_guard_files": changed}


def fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def verdict(value: float, target: float) -> str:
    if value is None or math.isnan(value):
        return "not assessed"
    return "PASS" if value <= target else "MISS"


def print_report(res: dict[str, Any]) -> None:
    m = res["machine"]
    src = res["source"]
    print(f"machine: nproc {m['nproc']}, {m['cpu']}, {m['memory_gb']} GB, governor "
          f"{m['cpufreq_governor']}; {m['kernel']}; {m['python']}; psutil {m['psutil']}")
    print(f"         load average {m['loadavg_start']} at start, {res.get('loadavg_end', '?')} "
          f"at end (other work on the machine widens p99 and can shift medians)")
    print(f"         fanotify: {m['fanotify']}; tmp {m['tmp_fs']}; guard {src['commit']}"
          + (f" + uncommitted {', '.join(src['uncommitted_guard_files'])}"
             if src["uncommitted_guard_files"] else ""))
    ex = res.get("exec", {})
    print()
    print(f"1. added latency per exec of an allowed program (a copy of /bin/true, "
          f"{res.get('program_bytes', 0)} B): {res['execs']} execs per folder after "
          f"{res['warmup']} warm-up, ABBA order, posix_spawn+waitpid, ms")
    hdr = (f"{'case':<26} {'marked p50':>10} {'p99':>8} {'unmarked p50':>13} {'p99':>8} "
           f"{'added p50':>10} {'added p99':>10} {'failed':>7}")
    print(hdr)
    print("-" * len(hdr))
    labels = {"baseline": "no agent (noise)", "bare": "bare responder (floor)",
              "guard": "guard fanotify"}
    for key, label in labels.items():
        r = ex.get(key)
        if r is None:
            continue
        if "error" in r and "marked" not in r:
            print(f"{label:<26} error: {r['error']}")
            continue
        fails = sum(r["failures"].values())
        print(f"{label:<26} {fmt(r['marked']['median_ms']):>10} {fmt(r['marked']['p99_ms']):>8} "
              f"{fmt(r['unmarked']['median_ms']):>13} {fmt(r['unmarked']['p99_ms']):>8} "
              f"{fmt(r['added_median_ms'], 4):>10} {fmt(r['added_p99_ms']):>10} {fails:>7}")
    g = ex.get("guard") or {}
    if g.get("agent"):
        a = g["agent"]
        print(f"   guard: {a['fanotify_events']} fanotify events for {a['execs_marked']} "
              f"marked execs ({a['events_per_exec']:.2f}/exec), {a['cached']} cache answers, "
              f"{a['decisions']} full decisions, {a['denied']} denied, {a['timeouts']} "
              f"timeouts; agent CPU {a['cpu_us_per_exec']:.0f} us/exec")
    base = ex.get("baseline") or {}
    if "marked" in g and "marked" in base:
        print(f"   guard's marked p50 minus the no-agent marked p50: "
              f"{fmt(g['marked']['median_ms'] - base['marked']['median_ms'], 4)} ms; unmarked: "
              f"{fmt(g['unmarked']['median_ms'] - base['unmarked']['median_ms'], 4)} ms")
    b = ex.get("bare") or {}
    if b.get("responder"):
        c = b["responder"]
        print(f"   bare responder: {c.get('events')} events ({c.get('exec')} exec, "
              f"{c.get('open')} open)")
    for key in labels:
        for e in (ex.get(key) or {}).get("errors", []):
            print(f"   {labels[key]}: {e}")
    t1 = g.get("added_median_ms", math.nan) if "marked" in g else math.nan
    print(f"target: guard's added median <= {ADDED_MEDIAN_TARGET_MS} ms: "
          f"{verdict(t1, ADDED_MEDIAN_TARGET_MS)} ({fmt(t1, 4)} ms; floor "
          f"{fmt(b.get('added_median_ms'), 4) if 'marked' in b else '-'} ms, noise "
          f"{fmt((ex.get('baseline') or {}).get('added_median_ms'), 4)} ms)")
    print()
    mon = res.get("monitor")
    if mon is not None:
        print(f"2. forbidden launch to process gone, portable monitor (process_poll_s = "
              f"{mon.get('poll_s')}, enforce): {mon.get('n')} launches of sh WATCHED/loop.sh, "
              f"ms")
        if "error" in mon and "median_ms" not in mon:
            print(f"   error: {mon['error']}")
        hdr2 = f"{'median':>8} {'p95':>8} {'max':>8} {'min':>8} {'stopped':>8} {'not stopped':>12}"
        print(hdr2)
        print("-" * len(hdr2))
        if "median_ms" in mon:
            print(f"{fmt(mon['median_ms'], 1):>8} {fmt(mon['p95_ms'], 1):>8} "
                  f"{fmt(mon['max_ms'], 1):>8} {fmt(mon['min_ms'], 1):>8} "
                  f"{mon['stopped']:>8} {mon['not_stopped']:>12}")
        mx = mon.get("max_ms", math.nan)
        if mon.get("not_stopped"):
            mx = math.inf
        print(f"target: every forbidden launch gone within {KILL_TARGET_MS:.0f} ms (max): "
              f"{verdict(mx, KILL_TARGET_MS)} (max {fmt(mon.get('max_ms'), 1)} ms, "
              f"p95 {fmt(mon.get('p95_ms'), 1)} ms)")
    if res.get("error"):
        print(f"\nerror: {res['error']}")


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark guard's launch control: added "
                                "latency per allowed exec (fanotify) and time to stop a "
                                "forbidden launch (portable monitor).")
    p.add_argument("--quick", action="store_true", help="200 execs per folder and 5 launches")
    p.add_argument("--execs", type=int, help="timed execs per folder (default 1000; --quick 200)")
    p.add_argument("--warmup", type=int, default=50, help="warm-up execs per folder")
    p.add_argument("--kills", type=int,
                   help="forbidden launches under the monitor (default 20; --quick 5)")
    p.add_argument("--poll-s", type=float, default=POLL_S, help="the monitor's process_poll_s")
    p.add_argument("--skip", default="", help="comma list of parts to skip: "
                   "baseline,bare,guard,monitor")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tmpdir", type=Path, help="where to make the temporary folder")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--bare-responder", metavar="DIR", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.execs = a.execs or (200 if a.quick else 1000)
    a.kills = a.kills or (5 if a.quick else 20)
    a.skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    return a


def _finite(x: Any) -> Any:
    """NaN and infinity become null, so the output is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def _on_sigterm(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.bare_responder:
        return bare_responder(args.bare_responder)
    signal.signal(signal.SIGTERM, _on_sigterm)
    tmp = Path(tempfile.mkdtemp(prefix="guard-bench-launch-", dir=args.tmpdir)).resolve()
    res: dict[str, Any] = {"quick": args.quick, "execs": args.execs, "warmup": args.warmup,
                           "machine": machine_info(tmp), "source": source_info(),
                           "targets": {"added_median_ms": ADDED_MEDIAN_TARGET_MS,
                                       "kill_max_ms": KILL_TARGET_MS},
                           "exec": {}}
    code = 0
    fan_ok, fan_why = fanotify_available()
    watch, plain = tmp / "Downloads", tmp / "plain"
    try:
        watch.mkdir()
        plain.mkdir()
        marked, unmarked = watch / "true", plain / "true"
        for path in (marked, unmarked):
            shutil.copy2("/bin/true", path)
            os.chmod(path, 0o755)
        res["program_bytes"] = marked.stat().st_size
        if "baseline" not in args.skip:
            print(f"no agent: {args.warmup}+{args.execs} execs per folder", file=sys.stderr)
            res["exec"]["baseline"] = time_execs(marked, unmarked, args.execs, args.warmup)
        if "bare" not in args.skip:
            if not fan_ok:
                res["exec"]["bare"] = {"error": f"fanotify unavailable: {fan_why}"}
            else:
                print(f"bare responder: {args.warmup}+{args.execs} execs per folder",
                      file=sys.stderr)
                bare = BareResponder(watch)
                try:
                    bare.start()
                    res["exec"]["bare"] = time_execs(marked, unmarked, args.execs,
                                                     args.warmup)
                finally:
                    bare.stop()
                res["exec"]["bare"]["responder"] = bare.counts
        if "guard" not in args.skip:
            if not fan_ok:
                res["exec"]["guard"] = {"error": f"fanotify unavailable: {fan_why}"}
            else:
                try:
                    res["exec"]["guard"] = measure_guard_fanotify(
                        tmp, watch, marked, unmarked, args.execs, args.warmup)
                except BenchError as exc:
                    res["exec"]["guard"] = {"error": str(exc)}
                    code = 1
        if "monitor" not in args.skip:
            try:
                res["monitor"] = measure_monitor(tmp, watch, args.kills, args.poll_s,
                                                 args.seed)
            except BenchError as exc:
                res["monitor"] = {"error": str(exc), "poll_s": args.poll_s, "n": args.kills}
                code = 1
    except KeyboardInterrupt:
        res["error"] = "interrupted"
        code = 130
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    res["loadavg_end"] = _loadavg()
    g = res["exec"].get("guard") or {}
    mon = res.get("monitor") or {}
    res["verdicts"] = {
        "added_median": verdict(g.get("added_median_ms", math.nan), ADDED_MEDIAN_TARGET_MS),
        "kill_max": verdict(math.inf if mon.get("not_stopped") else
                            mon.get("max_ms", math.nan), KILL_TARGET_MS)}
    if args.json:
        print(json.dumps(_finite(res), indent=1, default=str))
    else:
        print_report(res)
    return code


if __name__ == "__main__":
    sys.exit(main())
