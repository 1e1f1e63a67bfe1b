"""Hostile case 9b: the parser budget, as the agent runs it.

Case 9 measures the parsers themselves (each input scanned in a throw-away child, so a
crash is counted, not survived). This case runs the same kinds of input through the
agent's own ``IsolatedScanner`` in this process, which stands for the agent: generated
mutants, the hand-built malformed headers, bombs that inflate to hundreds of MB under a
256 MB memory budget, catastrophic YARA rules that run into the CPU and the wall-time
budgets, and real SIGSEGVs sent to a worker in the middle of a scan (what a parser's
memory bug does). Expected: every scan returns a verdict (none raises, none hangs past the
wall budget), everything built to blow a budget or crashed says so and is never clean,
and every program under a document name is still flagged.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import inputs_malformed as mal
from figures import case, check
from guard.sandbox import Budget, IsolatedScanner
from guard.scanner import ScanOptions, load_rules
from guard.verdict import Code, Level

SLOW_RULES = r"""
rule slow_quadratic {
    condition: for any i in (0..filesize - 1): (
        for any j in (0..filesize - 1): (uint8(i) == 0x42 and uint8(j) == 0x43))
}
"""
WALL_S = 20.0
CRASH_EVERY = 50          # one injected crash per this many inputs


def _inputs(n: int, full: bool):
    """(label, file name, bytes, expect): expect "limit" (must say a limit was hit, never
    clean), "flagged" (never clean) or ""."""
    for label, name, data, expect in mal.handmade():
        yield label, name, data, expect
    size = (1 << 30) if full else (320 << 20)
    yield "bomb:vba-part", "Invoice.docm", mal.vba_part_bomb(size), "limit"
    yield "bomb:pdf-attachment", "Invoice.pdf", mal.pdf_attachment_bomb(size), "limit"
    yield ("bomb:pdf-many-attachments", "Statement.pdf",
           mal.pdf_attachment_bomb(70_000_000, 20 if full else 6), "limit")
    yield "bomb:depth-100", "depth100.zip", mal.nested(100), "limit"
    for label, name, data in mal.generate(n):
        yield label, name, data, ""


def _crash_one(iso: IsolatedScanner, path: Path) -> tuple[bool, str]:
    """Scan *path* (slow under the slow rules) and SIGSEGV its worker mid-scan: (the
    verdict says so and is not clean, detail)."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(iso.scan_file(path)))
    t.start()
    deadline, pid = time.monotonic() + 30, None
    while pid is None and time.monotonic() < deadline:
        busy = iso.worker_pids(busy=True)
        pid = busy[0] if busy else None
        time.sleep(0.01)
    if pid is None:
        t.join(WALL_S + 30)
        return False, "no busy worker to crash"
    time.sleep(random.uniform(0.05, 0.3))
    try:
        os.kill(pid, signal.SIGSEGV)     # our own child, still ours: it is scanning
    except ProcessLookupError:
        pass
    t.join(WALL_S + 30)
    if not out:
        return False, "no verdict after the crash"
    v = out[0]
    ok = v.level is not Level.CLEAN and any("SIGSEGV" in r.detail for r in v.reasons)
    return ok, "" if ok else f"crash verdict {v.level.value}: {[r.detail for r in v.reasons]}"


@case("9b", "Parser budget in the agent: bombs, runaway rules, parser crashes", fast=200,
      full=5_000, unit="inputs")
def parser_budget(n: int, workdir: Path) -> dict:
    full = n >= 2000
    folder = workdir / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    rules_dir = workdir / "slow-rules"
    rules_dir.mkdir(exist_ok=True)
    (rules_dir / "slow.yar").write_text(SLOW_RULES)
    slow_file = workdir / "Notes.txt"
    slow_file.write_bytes(b"B" * 100_000)

    iso = IsolatedScanner(load_rules(), ScanOptions(),
                          Budget(cpu_s=15.0, memory_mb=256.0, wall_s=WALL_S))
    slow_rules = load_rules([rules_dir], bundled=False)
    no_yara_limit = ScanOptions(yara_timeout_s=3600.0)
    by_cpu = IsolatedScanner(slow_rules, no_yara_limit, Budget(cpu_s=2.0, wall_s=WALL_S))
    by_wall = IsolatedScanner(slow_rules, no_yara_limit, Budget(cpu_s=600.0, wall_s=2.0))
    crasher = IsolatedScanner(slow_rules, no_yara_limit, Budget(cpu_s=600.0, wall_s=600.0))
    figures: dict = {"inputs": 0, "raised": 0, "hangs": 0, "limit_exceeded": 0,
                     "called_clean_wrongly": 0, "crashes_injected": 0, "crashes_contained": 0,
                     "cpu_budget_stops": 0, "wall_budget_stops": 0, "max_scan_s": 0.0}
    problems: list[str] = []
    try:
        for i, (label, name, data, expect) in enumerate(_inputs(n, full)):
            sub = folder / str(i % 64)
            sub.mkdir(exist_ok=True)
            path = sub / name
            path.write_bytes(data)
            del data
            started = time.monotonic()
            try:
                v = iso.scan_file(path, follow=False)
            except Exception as exc:  # noqa: BLE001 - counted: scan_file must never raise
                figures["raised"] += 1
                problems.append(f"{label}: raised {type(exc).__name__}: {exc}")
                continue
            finally:
                path.unlink(missing_ok=True)
            took = time.monotonic() - started
            figures["inputs"] += 1
            figures["max_scan_s"] = round(max(figures["max_scan_s"], took), 2)
            if took > WALL_S + 15:
                figures["hangs"] += 1
                problems.append(f"{label}: {took:.0f} s")
            codes = {r.code for r in v.reasons}
            limited = bool(codes & {Code.LIMIT_EXCEEDED, Code.ARCHIVE_BOMB})
            figures["limit_exceeded"] += limited
            if (expect == "limit" and (not limited or v.level is Level.CLEAN)) or (
                    expect == "flagged" and v.level is Level.CLEAN):
                figures["called_clean_wrongly"] += 1
                problems.append(f"{label}: {v.level.value} {sorted(c.value for c in codes)}")
            if i % CRASH_EVERY == CRASH_EVERY - 1:
                figures["crashes_injected"] += 1
                ok, why = _crash_one(crasher, slow_file)
                figures["crashes_contained"] += ok
                if not ok:
                    problems.append(why)
        for scanner, key, word in ((by_cpu, "cpu_budget_stops", "CPU time"),
                                   (by_wall, "wall_budget_stops", "wall time")):
            for _ in range(3 if full else 1):
                v = scanner.scan_file(slow_file)
                if v.level is not Level.CLEAN and any(word in r.detail for r in v.reasons):
                    figures[key] += 1
                else:
                    problems.append(f"{word}: {v.level.value} {[r.detail for r in v.reasons]}")
    finally:
        for s in (iso, by_cpu, by_wall, crasher):
            s.close()
    figures["workers_started"] = iso.started + by_cpu.started + by_wall.started + crasher.started
    expected_stops = 3 if full else 1
    figures["failures"] = (figures["raised"] + figures["hangs"]
                           + figures["called_clean_wrongly"]
                           + figures["crashes_injected"] - figures["crashes_contained"]
                           + (expected_stops - figures["cpu_budget_stops"])
                           + (expected_stops - figures["wall_budget_stops"]))
    if problems:
        figures["problems"] = " | ".join(problems[:20])
    return figures


def test_parser_budget(tmp_path):
    from figures import CASES
    check(CASES["9b"].run(CASES["9b"].fast, tmp_path))
