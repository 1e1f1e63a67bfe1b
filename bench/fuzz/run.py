#!/usr/bin/env python3
"""Run guard's fuzz targets for a set time and keep what breaks them as regressions.

With atheris installed (``pip install 'guard[fuzz]'`` or ``pip install atheris``) each
target runs coverage-guided (libFuzzer) in its own process; without it, or with
``--no-atheris``, a fallback mutates the corpus's files at random (no coverage feedback)
in a child process watched for crashes and hangs. Either way, every input that crashed a
target, hung it (``--timeout``) or ran it out of memory (``--rss-limit-mb``) is copied to
tests/hostile/regressions/<target>-<kind>-<sha>.bin, which the test suite replays.

    python bench/fuzz/run.py --seconds 600                  # every target, 10 min each
    python bench/fuzz/run.py --target pe,containers --seconds 60
    python bench/fuzz/run.py --seconds 60 --no-atheris --json

Exit status: 0 when no target failed, 1 when one did (its inputs are saved), 2 on usage
errors.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
REGRESSIONS = REPO / "tests" / "hostile" / "regressions"
sys.path.insert(0, str(HERE))
import targets as T

ARTIFACT_KINDS = ("crash", "timeout", "oom", "leak")
MAX_RESTARTS = 25            # crashes per target before it is given up for this run


def _have_atheris() -> bool:
    import importlib.util
    return importlib.util.find_spec("atheris") is not None


def _seed(corpus: Path, target: str) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    if any(corpus.iterdir()):
        return
    for _, data in T.seed_files(target):
        (corpus / hashlib.sha1(data).hexdigest()).write_bytes(data)


def save_regression(target: str, kind: str, data: bytes, into: Path = REGRESSIONS) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    path = into / f"{target}-{kind}-{hashlib.sha256(data).hexdigest()[:12]}.bin"
    if not path.exists():
        path.write_bytes(data)
    return path


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get(
        "PYTHONPATH", "").split(os.pathsep) if p])
    return env


# --- coverage-guided (atheris) -------------------------------------------------------------

def _signature(text: str) -> str:
    """Where a failure happened, to keep one input per bug: the last frame of a Python
    traceback and the exception, or libFuzzer's kind of error."""
    frames = re.findall(r'File "([^"]+)", line (\d+)', text)
    exc = re.findall(r"^(\w+(?:Error|Exception|Failure|Exit)\b[^\n]{0,80})", text, re.MULTILINE)
    if frames:
        f, line = frames[-1]
        return f"{Path(f).name}:{line}:{exc[-1].split(':')[0] if exc else ''}"
    kind = re.findall(r"ERROR: libFuzzer: ([\w -]+)", text)
    return kind[-1].strip() if kind else "unknown"


def _executed(text: str) -> int:
    """Inputs run by one libFuzzer process: its final stats, else its last status line."""
    stat = re.findall(r"stat::number_of_executed_units: (\d+)", text)
    if stat:
        return int(stat[-1])
    status = re.findall(r"^#(\d+)\s", text, re.MULTILINE)
    return int(status[-1]) if status else 0


def run_atheris(target: str, seconds: float, work: Path, args) -> dict:
    corpus, artifacts = work / "corpus" / target, work / "artifacts" / target
    _seed(corpus, target)
    artifacts.mkdir(parents=True, exist_ok=True)
    found: list[str] = []
    signatures: dict[str, int] = {}
    execs, cov, restarts = 0, 0, 0
    log = work / f"{target}.log"
    log.write_bytes(b"")
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 1 and restarts <= MAX_RESTARTS:
        cmd = [sys.executable, str(HERE / "targets.py"), target,
               f"-max_total_time={int(left)}", f"-max_len={args.max_len}",
               f"-timeout={args.timeout}", f"-rss_limit_mb={args.rss_limit_mb}",
               f"-artifact_prefix={artifacts}/", "-print_final_stats=1", str(corpus)]
        offset = log.stat().st_size
        with open(log, "ab") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_child_env(),
                                    start_new_session=True)
            try:
                proc.wait(left + 120)
            except subprocess.TimeoutExpired:          # libFuzzer itself stuck
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        raw = log.read_bytes()
        text, mine = raw.decode(errors="replace"), raw[offset:].decode(errors="replace")
        execs += _executed(mine)
        cov = max((int(c) for c in re.findall(r" cov: (\d+)", text)), default=cov)
        sig = _signature(mine)
        fresh = signatures.get(sig, 0) == 0
        new = _collect(target, artifacts, keep=fresh)
        if not new and proc.returncode == 0:
            break
        if new or proc.returncode != 0:
            signatures[sig] = signatures.get(sig, 0) + 1
            found += new
            if signatures[sig] >= 3:         # the same bug again and again: stop here
                break
        restarts += 1
    return {"target": target, "mode": "atheris", "seconds": seconds, "execs": execs,
            "coverage": cov, "saved": found, "bugs": sorted(signatures), "log": str(log)}


def _collect(target: str, artifacts: Path, keep: bool = True) -> list[str]:
    out = []
    for p in sorted(artifacts.iterdir()):
        kind = p.name.split("-", 1)[0]
        if kind in ARTIFACT_KINDS:
            if keep:
                out.append(str(save_regression(target, kind, p.read_bytes())))
            p.unlink()
    return out


# --- fallback: random mutation without coverage -------------------------------------------

def _mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(6)
        at = rng.randrange(len(out) + 1) if rng.random() < 0.5 else rng.randrange(
            min(len(out), 4096) + 1)
        if op == 0 and out:                                      # flip bits
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and len(out) > 4:                           # boundary integer
            width = rng.choice((1, 2, 4))
            at = min(at, len(out) - width)
            val = rng.choice((0, 0xFF, 0x7F, 0x80, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, len(out)))
            out[at:at + width] = (val & ((1 << 8 * width) - 1)).to_bytes(width, "little")
        elif op == 2:                                            # truncate
            del out[at:]
        elif op == 3:                                            # delete a chunk
            del out[at:at + rng.randint(1, 256)]
        elif op == 4:                                            # duplicate a chunk
            out[at:at] = out[at:at + rng.randint(1, 512)] * rng.randint(1, 8)
        else:                                                    # splice another input
            other = rng.choice(pool)
            src = rng.randrange(len(other) + 1)
            out[at:at] = other[src:src + rng.randint(1, 1024)]
    if data and out[:1] != data[:1] and rng.random() < 0.8:   # mostly keep the kind byte
        out[:1] = data[:1]
    return bytes(out[:1 << 20])


def fallback_child(target: str, seconds: float, work: Path, seed: int) -> int:
    """In the child: mutate and run until the time is up. Before each run the input goes
    to <work>/current-<target>, so the parent can save it if this process dies or hangs."""
    import logging
    import warnings
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    rng = random.Random(seed)
    pool = [d for _, d in T.seed_files(target)] or [b""]
    fn = T.TARGETS[target]
    current = work / f"current-{target}"
    beat = work / f"beat-{target}"
    deadline = time.monotonic() + seconds
    execs = 0
    seen: set[str] = set()
    while time.monotonic() < deadline:
        data = _mutate(rng, rng.choice(pool), pool)
        current.write_bytes(data)
        try:
            fn(data)
        except Exception as exc:  # noqa: BLE001 - a target failure is the finding
            import traceback
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            sig = f"{Path(tb.filename).name}:{tb.lineno}:{type(exc).__name__}"
            if sig not in seen:                 # one input per bug
                seen.add(sig)
                save_regression(target, "crash", data)
                print(json.dumps({"failure": sig, "why": str(exc)[:200]}), flush=True)
        execs += 1
        if execs % 50 == 0:
            beat.write_text(str(execs))
            if len(pool) < 2000 and rng.random() < 0.1:
                pool.append(data)            # keep some mutants: deeper mutations later
    beat.write_text(str(execs))
    print(json.dumps({"execs": execs}), flush=True)
    return 0


def run_fallback(target: str, seconds: float, work: Path, args) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + seconds
    execs, found, restarts, seed = 0, [], 0, args.seed
    bugs: list[str] = []
    before = set(REGRESSIONS.glob(f"{target}-*")) if REGRESSIONS.is_dir() else set()
    while (left := deadline - time.monotonic()) > 1 and restarts <= MAX_RESTARTS:
        beat, current = work / f"beat-{target}", work / f"current-{target}"
        beat.write_text("0")
        out_path = work / f"fallback-{target}.out"
        with open(out_path, "wb") as out_fh:     # a file, not a pipe: never blocks the child
            proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()),
                                     "--fallback-child", target, str(left), str(work), str(seed)],
                                    stdout=out_fh, stderr=subprocess.DEVNULL,
                                    env=_child_env(), start_new_session=True)
        last_beat, last_change = "0", time.monotonic()
        hung = False
        while proc.poll() is None:
            time.sleep(0.5)
            now = beat.read_text() if beat.exists() else last_beat
            if now != last_beat:
                last_beat, last_change = now, time.monotonic()
            if time.monotonic() - last_change > args.timeout + 60:   # 50 runs per beat
                hung = True
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        out = out_path.read_text(errors="replace")
        execs += sum(json.loads(line).get("execs", 0) for line in out.splitlines()
                     if line.startswith("{"))
        bugs += [json.loads(line)["failure"] for line in out.splitlines()
                 if line.startswith('{"failure"')]
        if hung or proc.returncode not in (0, None):
            kind = "timeout" if hung else "crash"
            if current.exists():
                found.append(str(save_regression(target, kind, current.read_bytes())))
            execs += int(last_beat or 0)
            restarts += 1
            seed += 1
            continue
        break
    after = set(REGRESSIONS.glob(f"{target}-*")) if REGRESSIONS.is_dir() else set()
    found += [str(p) for p in sorted(after - before) if str(p) not in found]
    return {"target": target, "mode": "random (no coverage)", "seconds": seconds,
            "execs": execs, "coverage": None, "saved": found, "bugs": bugs}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--fallback-child"]:
        return fallback_child(argv[1], float(argv[2]), Path(argv[3]), int(argv[4]))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="per target (default 60)")
    p.add_argument("--target", default="", help=f"comma list of {', '.join(T.TARGETS)}")
    p.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                    "guard-fuzz"),
                   help="corpora, artifacts and logs (kept between runs)")
    p.add_argument("--jobs", type=int, default=1, help="targets fuzzed at once")
    p.add_argument("--no-atheris", action="store_true", help="random mutation only")
    p.add_argument("--max-len", type=int, default=262144)
    p.add_argument("--timeout", type=int, default=30, help="seconds per input: a hang")
    p.add_argument("--rss-limit-mb", type=int, default=2048)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    chosen = [t for t in args.target.split(",") if t] or list(T.TARGETS)
    unknown = [t for t in chosen if t not in T.TARGETS]
    if unknown:
        p.error(f"unknown target(s): {', '.join(unknown)}")
    use_atheris = not args.no_atheris and _have_atheris()
    if not use_atheris and not args.no_atheris:
        print("atheris is not installed: random mutation without coverage", file=sys.stderr)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("XDG_CACHE_HOME", str(work / "rule-cache"))
    run = run_atheris if use_atheris else run_fallback
    from concurrent.futures import ThreadPoolExecutor
    started = time.monotonic()
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        rows = list(pool.map(lambda t: run(t, args.seconds, work, args), chosen))
    if args.json:
        print(json.dumps({"seconds": round(time.monotonic() - started, 1), "targets": rows},
                         indent=1))
    else:
        print(f"{'target':11} {'mode':21} {'seconds':>8} {'execs':>10} {'exec/s':>7} "
              f"{'cov':>6}  saved")
        for r in rows:
            rate = r["execs"] / r["seconds"] if r["seconds"] else 0
            print(f"{r['target']:11} {r['mode']:21} {r['seconds']:8.0f} {r['execs']:10d} "
                  f"{rate:7.0f} {r['coverage'] if r['coverage'] is not None else '-':>6}  "
                  f"{len(r['saved'])} {' '.join(Path(s).name for s in r['saved'][:5])}")
    return 1 if any(r["saved"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
