#!/usr/bin/env python3
"""The hostile-world suite at full scale: one table of figures.

Runs every case registered in tests/hostile (races, crashes, hostile inputs) with its
full count (10,000 swap iterations, 1,000 kill cycles, ...) and prints, per case, what it
tried and how many outcomes were failures (escapes, files lost or duplicated, crashes,
hangs, undetected tampering). The same cases run in CI with small counts (pytest
tests/hostile). Run as root on Linux, with the Python of guard's environment:

    .venv/bin/python bench/hostile.py               # every case, full counts
    .venv/bin/python bench/hostile.py --only 1,5    # some cases
    .venv/bin/python bench/hostile.py --scale 0.1   # a tenth of the full counts
    .venv/bin/python bench/hostile.py --json

Exit status 0 when every case ran with 0 failures, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOSTILE = REPO / "tests" / "hostile"


def load_cases():
    for p in (REPO / "tests", HOSTILE):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    for f in sorted(HOSTILE.glob("test_*.py")):
        importlib.import_module(f.stem)
    from figures import CASES
    return CASES


def _key(number: str) -> tuple[int, str]:
    digits = "".join(ch for ch in number if ch.isdigit())
    return (int(digits) if digits else 0, number)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="comma list of case numbers")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the full counts")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    cases = load_cases()
    chosen = [c for n, c in sorted(cases.items(), key=lambda kv: _key(kv[0]))
              if not args.only or n in args.only.split(",")]
    rows = []
    for c in chosen:
        n = max(1, int(c.full * args.scale))
        print(f"case {c.number}: {c.title} ({n} {c.unit})", file=sys.stderr, flush=True)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"guard-hostile-{c.number}-") as work:
            try:
                figures = c.run(n, Path(work))
            except Exception as exc:   # a case that breaks is a failure, not a crash here
                figures = {"failures": 1, "error": f"{type(exc).__name__}: {exc}"}
                traceback.print_exc()
        rows.append({"case": c.number, "title": c.title, "n": n, "unit": c.unit,
                     "seconds": round(time.monotonic() - started, 1), "figures": figures,
                     "ok": figures.get("failures") == 0})
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
    else:
        print(f"{'case':5} {'what':48} {'tried':>14} {'failures':>8}  figures")
        for r in rows:
            extra = ", ".join(f"{k} {v}" for k, v in r["figures"].items() if k != "failures")
            print(f"{r['case']:5} {r['title'][:48]:48} {r['n']:>8} {r['unit'][:5]:5} "
                  f"{r['figures'].get('failures', '?'):>8}  {extra}  ({r['seconds']} s)")
        bad = [r["case"] for r in rows if not r["ok"]]
        print("all cases: 0 failures" if not bad else f"FAILURES in case(s) {', '.join(bad)}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
