#!/usr/bin/env python3
"""Scan hostile inputs in child processes, so that what would take the agent down is counted.

The parent (``scan_groups``) hands each batch of input files to a child process
(``python inputs_harness.py child <manifest> <first> <MB>``) and watches it:

- a child that dies by a signal (segfault, abort) while scanning input *i* is a **crash**
  of *i*; an exception out of ``Scanner.scan_file`` (which must never raise) or a verdict
  that cannot be serialised is counted as **raised**;
- an input whose verdict has not come back ``deadline_s`` after the child started it is
  a **hang**: the child is killed (SIGKILL, its whole process group);
- after either, a new child goes on with the next input of the batch.

The child reports, per input, the CPU seconds it spent (user + system, every thread: the
background hash included) and the peak RSS during the scan (the kernel's VmHWM, reset
before each input through /proc/self/clear_refs; where that is not possible, ``ru_maxrss``
over the child's life). It runs under an address-space
limit (``as_limit_mb``) so that an unbounded allocation shows up as an over-budget input
instead of taking the machine down.

Only the standard library and guard are imported here (the child runs it as a script).
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LIMIT_CODES = ("limit-exceeded", "archive-bomb")


@dataclass
class Input:
    """One file to scan. *expect*: "limit" (built to blow a limit: must say so and must not
    be clean), "flagged" (a malformed program under a document name: must not be clean),
    "skipped" (a special file: must be skipped, never opened), or "" (anything but a
    crash, a hang or an over-budget scan)."""
    path: str
    label: str
    expect: str = ""
    follow: bool = True


@dataclass
class Result:
    label: str
    expect: str
    outcome: str                   # "ok", "crash", "hang", "raised"
    level: str = ""
    codes: tuple[str, ...] = ()
    error: str | None = None
    skipped: bool = False
    cpu_s: float = 0.0
    wall_s: float = 0.0
    rss_mb: float = 0.0
    detail: str = ""
    growth_mb: float | None = None     # peak RSS above the RSS the input started at
    budget: Budget | None = None

    @property
    def over_budget(self) -> bool:
        b = self.budget or Budget()
        return self.outcome == "ok" and (
            self.cpu_s > b.cpu_s or self.rss_mb > b.rss_mb
            or "out of memory" in (" ".join(self.codes) + self.detail).lower())

    @property
    def limit_hit(self) -> bool:
        return any(c in LIMIT_CODES for c in self.codes)

    @property
    def clean_wrongly(self) -> bool:
        """Called clean although it blew a limit or is a program under a document name."""
        if self.outcome != "ok" or self.level != "clean":
            return False
        return self.limit_hit or self.expect in ("limit", "flagged")

    @property
    def expectation_failed(self) -> str:
        """Why the verdict is not what this input was built to get ("" when it is)."""
        if self.outcome != "ok":
            return ""
        if self.expect == "limit" and not self.limit_hit:
            return f"no limit-exceeded/archive-bomb reason: {self.codes}"
        if self.expect == "skipped" and not self.skipped:
            return f"special file was not skipped: {self.level} {self.codes} {self.error}"
        if self.clean_wrongly:
            return "called clean"
        return ""


@dataclass
class Budget:
    deadline_s: float = 10.0       # wall clock per input before it is a hang
    cpu_s: float = 10.0            # CPU seconds per input
    rss_mb: float = 1024.0         # peak RSS of the scanning process
    as_limit_mb: int = 4096        # address-space cap of the child (a safety net)


@dataclass
class Summary:
    results: list[Result] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        rs = self.results
        worst_cpu = max(rs, key=lambda r: r.cpu_s, default=None)
        worst_rss = max(rs, key=lambda r: r.rss_mb, default=None)
        over = [r for r in rs if r.over_budget]
        wrong = [r for r in rs if r.expectation_failed]
        return {
            "inputs": len(rs),
            "crashes": sum(r.outcome in ("crash", "raised") for r in rs),
            "hangs": sum(r.outcome == "hang" for r in rs),
            "max_cpu_s": round(worst_cpu.cpu_s, 2) if worst_cpu else 0.0,
            "max_cpu_input": worst_cpu.label if worst_cpu else "",
            "max_rss_mb": round(worst_rss.rss_mb, 1) if worst_rss else 0.0,
            "max_rss_input": worst_rss.label if worst_rss else "",
            "over_budget": len(over),
            "limit_exceeded": sum(r.limit_hit for r in rs),
            "called_clean_wrongly": sum(r.clean_wrongly for r in rs),
            "unexpected_verdicts": len(wrong),
        }

    def problems(self, limit: int = 20) -> list[str]:
        out = []
        for r in self.results:
            why = ""
            if r.outcome != "ok":
                why = f"{r.outcome}: {r.detail}"
            elif r.over_budget:
                why = f"over budget: {r.cpu_s:.1f} CPU s, {r.rss_mb:.0f} MB {r.detail}"
            elif r.expectation_failed:
                why = r.expectation_failed
            if why:
                out.append(f"{r.label}: {why}"[:400])
        return out[:limit]


# --- parent -------------------------------------------------------------------------------

def _child_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["XDG_CACHE_HOME"] = str(workdir / "rule-cache")    # never the user's ~/.cache
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get(
        "PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("PYTHONWARNINGS", None)
    return env


class _Lines:
    """Lines from a pipe, with a timeout per line (select + os.read: no reader thread)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buf = b""
        self.eof = False

    def next(self, timeout_s: float) -> bytes | None:
        """A line, b"" at EOF, None on timeout."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buf:
            if self.eof:
                rest, self.buf = self.buf, b""
                return rest
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                self.eof = True
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def run_batch(inputs: list[Input], workdir: Path, budget: Budget, options: dict[str, Any]
              ) -> list[Result]:
    """Scan *inputs* in as many child processes as it takes (one more after each crash or
    hang). *options*: ``extra_rules`` (folders), ``yara_timeout_s``, ``max_size_bytes``."""
    manifest = workdir / f"manifest-{os.getpid()}-{id(inputs)}-{time.monotonic_ns()}.json"
    manifest.write_text(json.dumps({"inputs": [i.__dict__ for i in inputs], "options": options}))
    results: list[Result] = []
    start = 0
    try:
        while start < len(inputs):
            results += _one_child(inputs, start, manifest, workdir, budget)
            start = len(results)
    finally:
        manifest.unlink(missing_ok=True)
    return results


def _one_child(inputs: list[Input], start: int, manifest: Path, workdir: Path,
               budget: Budget) -> list[Result]:
    """Run one child from input *start* until it finishes, crashes or hangs."""
    out: list[Result] = []
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", str(Path(__file__).resolve()), "child",
         str(manifest), str(start), str(budget.as_limit_mb)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=_child_env(workdir), start_new_session=True)   # killable as one group
    lines = _Lines(proc.stdout.fileno())
    current: int | None = None
    began = time.monotonic()
    try:
        # Startup (imports, rule compilation) gets its own generous allowance.
        ready = lines.next(120.0)
        if not ready or not ready.startswith(b'{"ready"'):
            raise RuntimeError(f"scan child did not start: {ready!r} "
                               f"{proc.stderr.read(4000) if ready is not None else ''}")
        while True:
            wait = budget.deadline_s - (time.monotonic() - began) if current is not None \
                else 30.0
            line = lines.next(max(0.0, wait))
            if line is None:
                if current is None:
                    raise RuntimeError("scan child stalled between inputs")
                _kill(proc)
                inp = inputs[current]
                out.append(Result(inp.label, inp.expect, "hang", wall_s=budget.deadline_s,
                                  detail=f"no verdict after {budget.deadline_s:g} s"))
                return out
            if line == b"":
                code = proc.wait(30)
                if current is None and code == 0:
                    return out
                inp = inputs[current if current is not None else start + len(out)]
                err = proc.stderr.read(3000).decode("utf-8", "replace")
                what = f"signal {-code}" if code < 0 else f"exit {code}"
                out.append(Result(inp.label, inp.expect, "crash",
                                  detail=f"{what}: {err.strip()[-1500:]}"))
                return out
            msg = json.loads(line)
            if "begin" in msg:
                current, began = msg["begin"], time.monotonic()
                continue
            inp = inputs[msg["i"]]
            out.append(Result(inp.label, inp.expect, msg["outcome"], msg.get("level", ""),
                              tuple(msg.get("codes", ())), msg.get("error"),
                              msg.get("skipped", False), msg.get("cpu_s", 0.0),
                              msg.get("wall_s", 0.0), msg.get("rss_mb", 0.0),
                              msg.get("detail", ""), growth_mb=msg.get("growth_mb")))
            current = None
            if out[-1].rss_mb > budget.rss_mb:
                return out        # a fresh child for the rest: the peak is this input's alone
    finally:
        if proc.poll() is None:
            _kill(proc)
        for stream in (proc.stdout, proc.stderr):
            stream.close()


@dataclass
class Group:
    """Inputs scanned by one scanner configuration, under one budget. *cleanup* runs when
    the group is done (it deletes the group's files: disk use stays bounded)."""
    inputs: list[Input]
    options: dict[str, Any] = field(default_factory=dict)
    budget: Budget = field(default_factory=Budget)
    cleanup: Callable[[], None] | None = None


def scan_groups(groups: Iterable[Group], workdir: Path, workers: int = 2) -> Summary:
    """Scan every group, *workers* at a time (each in its own children); groups are taken
    from the iterable only as workers free up, so a generator can build them lazily."""
    summary = Summary()

    def one(g: Group) -> list[Result]:
        try:
            return run_batch(g.inputs, workdir, g.budget, g.options)
        finally:
            if g.cleanup is not None:
                g.cleanup()

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: list = []
        for g in groups:
            pending.append((pool.submit(one, g), g.budget))
            while len([f for f, _ in pending if not f.done()]) >= workers:
                time.sleep(0.02)
        for fut, budget in pending:
            for r in fut.result():
                r.budget = budget
                summary.results.append(r)
    return summary


# --- child --------------------------------------------------------------------------------

def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _release_memory() -> None:
    """What the agent does when idle (guard.agent.memory.release_memory): collect the cycles,
    give freed heap back. Between inputs, so one input's leftovers are not the next one's
    peak."""
    import gc
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    except (OSError, ValueError, IndexError):
        return 0.0


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so the next reading is this input's own
    peak (Linux >= 4.0). False where it cannot be reset: ru_maxrss is used then."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _rss_mb(since_reset: bool) -> float:
    """Peak RSS in MiB: since the last reset, else over the child's life."""
    if since_reset:
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024.0
        except (OSError, ValueError, IndexError):
            pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(manifest: str, first: int, as_limit_mb: int) -> int:
    cap = as_limit_mb << 20               # an unbounded allocation fails here, not the host
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))      # no core files from crashes
    import warnings
    warnings.simplefilter("ignore")            # libraries warn on damaged input; not news
    spec = json.loads(Path(manifest).read_text())
    opts = spec["options"]
    from guard.identify.containers import Limits
    from guard.scanner import INTERNAL_ERROR, Scanner, ScanOptions, load_rules

    rules = load_rules(opts.get("extra_rules", ()))
    if rules.errors:
        raise SystemExit(f"rules did not compile: {[str(e) for e in rules.errors]}")
    kwargs = {k: opts[k] for k in ("yara_timeout_s", "max_size_bytes") if k in opts}
    scanner = Scanner(rules, ScanOptions(limits=Limits(), **kwargs))
    emit = sys.stdout.write
    emit(json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()
    for i in range(first, len(spec["inputs"])):
        inp = spec["inputs"][i]
        emit(json.dumps({"begin": i}) + "\n")
        sys.stdout.flush()
        _release_memory()
        reset = _reset_peak()
        base = _current_rss_mb()
        cpu, wall = _cpu_s(), time.monotonic()
        msg: dict[str, Any] = {"i": i}
        try:
            v = scanner.scan_file(inp["path"], follow=inp.get("follow", True))
            json.dumps(v.to_dict())          # a verdict must serialise (audit record)
            detail = "; ".join(r.detail for r in v.reasons
                               if r.code in LIMIT_CODES or r.code == "malformed")
            # scan_file caught an exception a parser let out: a bug, counted as raised
            internal = [r.detail for r in v.reasons if r.detail.startswith(INTERNAL_ERROR)]
            msg.update(outcome="raised" if internal else "ok", level=v.level.value,
                       codes=list(v.codes), error=v.error, skipped=v.skipped,
                       detail=(internal[0] if internal else detail)[:300])
        except BaseException as exc:  # noqa: BLE001 - scan_file must never raise
            import traceback
            msg.update(outcome="raised",
                       detail=f"{type(exc).__name__}: {exc} | "
                              f"{traceback.format_exc(limit=-3)[-800:]}")
        msg.update(cpu_s=round(_cpu_s() - cpu, 3), wall_s=round(time.monotonic() - wall, 3),
                   rss_mb=round(_rss_mb(reset), 1))
        msg["growth_mb"] = round(msg["rss_mb"] - base, 1) if reset else None
        emit(json.dumps(msg) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "child":
        sys.exit(child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    sys.exit("usage: inputs_harness.py child <manifest.json> <first index> <address-space MB>")
