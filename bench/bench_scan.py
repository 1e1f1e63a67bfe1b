#!/usr/bin/env python3
"""Throughput benchmark: ``guard scan`` against the yara CLI, ``file`` and ``sha256sum``.

One run generates one or more corpora deterministically (seeded) from the real files in
the shared test corpus (``tests/corpus/benign`` and ``tests/corpus/executables``, read
only), mixed with disguised executables (``pe32.exe`` copied as ``Invoice-00042.pdf``),
random text files and random binary blobs from about 100 bytes to a few MB. It then times
every tool as a subprocess over each corpus, wall clock, after one warm-up run that fills
the page cache (and guard's compiled-rules cache), keeping the best of ``--repeat`` runs,
and prints one table:

    corpus  tool  files  MB  seconds  files/s  MB/s  guard ×

where ``guard ×`` is guard's files/s divided by that tool's files/s. It also prints the
machine (nproc, CPU, Python, yara and libmagic versions) and whether guard met its target
of at least the yara CLI's throughput.

The tools and their exact command lines:

* guard:     ``guard scan --json --rules RULES CORPUS`` (stdout to /dev/null; exit 0 or 1
             is normal, 1 meaning that something was flagged; 2 is an error).
* yara:      ``yara -r -N -w -p JOBS -d filename= ... NS:RULE.yar ... CORPUS`` with every
             rule file under RULES that compiles on its own (each in its own namespace, the
             same way guard loads them), or with ``-C`` and one file compiled by ``yarac``
             when ``--yara-precompile`` is given.
* file:      ``find CORPUS -type f -print0 | xargs -0 -n 500 -P JOBS file --mime-type -b``
* sha256sum: ``find CORPUS -type f -print0 | xargs -0 -n 500 -P JOBS sha256sum``

Exit status: 0 when every selected tool that is installed ran without error, whatever the
figures say (this is a report, not a test); 1 when a tool failed (or guard could not be
started); 2 for a usage error such as a missing source corpus.

Run ``python bench/bench_scan.py --help`` for the options; bench/README.md has more.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import hashlib
import json
import math
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
DEFAULT_CORPUS = HERE.parent / "tests" / "corpus"
DEFAULT_RULES = HERE.parents[1] / "rules"
RULE_SUFFIXES = (".yar", ".yara")
YARA_EXTERNALS = ("filename", "filepath", "extension", "filetype", "md5", "owner")
INSTALL_HINT = "apt-get install -y yara file coreutils"
ALL_TOOLS = ("guard", "yara", "file", "sha256sum")
FULL_SIZES = (1_000, 10_000)
QUICK_SIZES = (200,)
XARGS_BATCH = 500
GENERATOR_VERSION = 1
MB = 1_000_000

# ---------------------------------------------------------------------------------------
# Corpus generation
# ---------------------------------------------------------------------------------------

# Share of each kind of file in a generated corpus (the rest of the files are "blob").
KIND_SHARES: dict[str, float] = {
    "benign": 0.25,      # real benign document/media/archive, under its own extension
    "executable": 0.07,  # real executable or active-content file, under its own extension
    "disguised": 0.07,   # real executable renamed to a document/media name
    "text": 0.30,        # random words, 100 B .. 128 KB
    "large": 0.0025,     # random text or bytes, 1 .. 3 MB (at least one per corpus)
}
SMALL_RANGE = (100, 128 * 1024)
LARGE_RANGE = (1 * 1024 * 1024, 3 * 1024 * 1024)
DECOYS = (
    ("Invoice", ".pdf"), ("Report", ".docx"), ("Budget_2024", ".xlsx"), ("photo", ".jpg"),
    ("scan", ".png"), ("notes", ".txt"), ("song", ".mp3"), ("slides", ".pptx"),
    ("README", ".md"), ("statement", ".rtf"), ("archive", ".zip"), ("video", ".mp4"),
)
TEXT_EXTENSIONS = (".txt", ".log", ".md", ".csv", ".ini", ".cfg", ".json", ".xml", ".html")
BLOB_EXTENSIONS = (".bin", ".dat", ".tmp", ".cache", ".db", "")


@dataclass
class CorpusInfo:
    """A generated corpus: where it is and what is in it."""

    name: str
    path: str
    files: int
    bytes: int
    seed: int
    composition: dict[str, int] = field(default_factory=dict)
    reused: bool = False

    @property
    def megabytes(self) -> float:
        return self.bytes / MB


def source_files(corpus: Path) -> tuple[list[Path], list[Path]]:
    """The real benign files and executables of the source corpus, sorted."""
    def collect(sub: str) -> list[Path]:
        root = corpus / sub
        if not root.is_dir():
            raise FileNotFoundError(f"source corpus folder not found: {root}")
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
        if not files:
            raise FileNotFoundError(f"no files in source corpus folder: {root}")
        return files
    return collect("benign"), collect("executables")


def _sources_fingerprint(benign: Sequence[Path], executables: Sequence[Path],
                         corpus: Path) -> str:
    digest = hashlib.sha256()
    for path in (*benign, *executables):
        digest.update(f"{path.relative_to(corpus)}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def _log_uniform(rng: random.Random, low: int, high: int) -> int:
    return int(math.exp(rng.uniform(math.log(low), math.log(high))))


def _text_pool(rng: random.Random, size: int) -> bytes:
    """Word-like text with line breaks, to cut random text files from."""
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [12, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1]
    vocab = ["".join(rng.choices(letters, weights, k=rng.randint(1, 10))) for _ in range(4000)]
    vocab += ["the", "and", "of", "to", "invoice", "payment", "2024", "total:", "=", "-", "#"]
    out: list[str] = []
    total = 0
    while total < size:
        line = " ".join(rng.choices(vocab, k=rng.randint(0, 18)))
        out.append(line)
        total += len(line) + 1
    return "\n".join(out).encode("ascii")[:size]


def _cut(pool: bytes, rng: random.Random, size: int) -> bytes:
    if size >= len(pool):
        return (pool * (size // len(pool) + 1))[:size]
    start = rng.randrange(len(pool) - size + 1)
    return pool[start:start + size]


def _blob(rng: random.Random, size: int) -> bytes:
    """Random bytes; one in four is a repeated random block (low entropy, like padding)."""
    if rng.random() < 0.25:
        block = rng.randbytes(rng.choice((16, 256, 4096)))
        return (block * (size // len(block) + 1))[:size]
    return rng.randbytes(size)


def _kinds(n: int, rng: random.Random) -> list[str]:
    counts = {k: round(n * share) for k, share in KIND_SHARES.items()}
    counts["large"] = max(1, counts["large"])
    counts["blob"] = n - sum(counts.values())
    kinds = [k for k, c in counts.items() for _ in range(c)]
    rng.shuffle(kinds)
    return kinds


def generate_corpus(dest: Path, n_files: int, source: Path, seed: int) -> CorpusInfo:
    """Write *n_files* files under *dest* (created; must not exist), deterministically."""
    benign, executables = source_files(source)
    rng = random.Random(f"guard-bench/{seed}/{n_files}")
    pool = _text_pool(random.Random(f"guard-bench/text/{seed}"), 4 * 1024 * 1024)
    dest.mkdir(parents=True)
    composition: dict[str, int] = {}
    total = 0
    for i, kind in enumerate(_kinds(n_files, rng)):
        # About 50 files per folder, folders two levels deep.
        folder = dest / f"dir{i // 1000:02d}" / f"sub{(i // 50) % 20:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        data: bytes | None = None
        src: Path | None = None
        if kind == "benign":
            src = rng.choice(benign)
            name = f"{src.stem}-{i:05d}{src.suffix}"
        elif kind == "executable":
            src = rng.choice(executables)
            name = f"{src.stem}-{i:05d}{src.suffix}"
        elif kind == "disguised":
            src = rng.choice(executables)
            stem, ext = rng.choice(DECOYS)
            name = f"{stem}-{i:05d}{ext}"
        elif kind == "text":
            data = _cut(pool, rng, _log_uniform(rng, *SMALL_RANGE))
            name = f"text-{i:05d}{rng.choice(TEXT_EXTENSIONS)}"
        elif kind == "blob":
            data = _blob(rng, _log_uniform(rng, *SMALL_RANGE))
            name = f"blob-{i:05d}{rng.choice(BLOB_EXTENSIONS)}"
        else:  # large
            size = rng.randint(*LARGE_RANGE)
            if rng.random() < 0.5:
                data, name = _cut(pool, rng, size), f"large-{i:05d}.log"
            else:
                data, name = _blob(rng, size), f"large-{i:05d}.bin"
        target = folder / name
        if src is not None:
            shutil.copyfile(src, target)
            total += target.stat().st_size
        else:
            assert data is not None
            target.write_bytes(data)
            total += len(data)
        composition[kind] = composition.get(kind, 0) + 1
    return CorpusInfo(name=f"{n_files:,} files", path=str(dest), files=n_files, bytes=total,
                      seed=seed, composition=dict(sorted(composition.items())))


def prepare_corpus(workdir: Path, n_files: int, source: Path, seed: int) -> CorpusInfo:
    """Generate the corpus of *n_files* in *workdir*, or reuse it if its stamp matches."""
    benign, executables = source_files(source)
    key = {"version": GENERATOR_VERSION, "files": n_files, "seed": seed,
           "sources": _sources_fingerprint(benign, executables, source)}
    dest = workdir / f"corpus-{n_files}"
    stamp = workdir / f"corpus-{n_files}.json"
    if dest.is_dir() and stamp.is_file():
        try:
            saved = json.loads(stamp.read_text())
            if saved.get("key") == key:
                info = CorpusInfo(**saved["info"])
                info.reused = True
                return info
        except (ValueError, TypeError, KeyError):
            pass
    if dest.exists():
        shutil.rmtree(dest)
    stamp.unlink(missing_ok=True)
    info = generate_corpus(dest, n_files, source, seed)
    stamp.write_text(json.dumps({"key": key, "info": asdict(info)}, indent=1))
    return info


# ---------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------

@dataclass
class Tool:
    """How to run one tool over a corpus, or why it cannot be run."""

    name: str
    # Builds the pipeline (one argv per stage) for a corpus folder.
    build: Callable[[Path], list[list[str]]] | None
    ok_codes: frozenset[int] = frozenset({0})
    missing: str = ""        # why it cannot run; empty when it can
    fatal_missing: bool = False  # a missing guard fails the run; a missing peer does not
    notes: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None

    def describe(self, corpus: Path) -> str:
        if self.build is None:
            return ""
        return " | ".join(shlex.join(stage) for stage in self.build(corpus))


@dataclass
class Result:
    corpus: str
    tool: str
    files: int
    megabytes: float
    seconds: float | None = None        # best of the timed runs
    all_seconds: list[float] = field(default_factory=list)
    files_per_s: float | None = None
    mb_per_s: float | None = None
    guard_ratio: float | None = None    # guard files/s / this tool's files/s
    status: str = "ok"                  # ok | missing | error
    detail: str = ""
    exit_codes: list[int] = field(default_factory=list)


def _run_quiet(argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None


def _tail(text: str, lines: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def guard_tool(rules: Path, command: str | None, env: dict[str, str]) -> Tool:
    if command:
        base = shlex.split(command)
    else:
        script = Path(sys.executable).parent / "guard"  # not resolved: keep the venv
        base = [str(script)] if script.is_file() else [sys.executable, "-m", "guard"]
    tool = Tool("guard", None, ok_codes=frozenset({0, 1}), fatal_missing=True, env=env)
    try:
        probe = subprocess.run([*base, "scan", "--help"], capture_output=True, text=True,
                               timeout=120, stdin=subprocess.DEVNULL, env=env)
    except (OSError, subprocess.SubprocessError) as exc:
        tool.missing = f"cannot start {shlex.join(base)}: {exc}"
        return tool
    if probe.returncode != 0:
        tool.missing = (f"`{shlex.join([*base, 'scan', '--help'])}` exited "
                        f"{probe.returncode}: {_tail(probe.stderr or probe.stdout, 3)}")
        return tool
    extra: list[str] = []
    # guard always adds its bundled rules/ to --rules; when the benchmark is given another
    # folder, leave the bundled ones out so that guard and yara match the same rules.
    if rules != DEFAULT_RULES and "--no-bundled-rules" in probe.stdout:
        extra.append("--no-bundled-rules")
        tool.notes.append("guard: run with --no-bundled-rules (--rules is not the repo's rules/)")
    tool.build = lambda d: [[*base, "scan", "--json", *extra, "--rules", str(rules), str(d)]]
    return tool


def find_rule_files(rules: Path) -> list[Path]:
    """Every .yar/.yara below *rules* (or *rules* itself), sorted, like guard finds them."""
    if rules.is_file():
        return [rules]
    if not rules.is_dir():
        return []
    return sorted(p for p in rules.rglob("*")
                  if p.is_file() and p.name.lower().endswith(RULE_SUFFIXES))


def yara_tool(rules: Path, jobs: int, precompile: bool, scratch: Path) -> Tool:
    tool = Tool("yara", None)
    yara = shutil.which("yara")
    if yara is None:
        tool.missing = f"yara not installed ({INSTALL_HINT})"
        return tool
    defines = [arg for var in YARA_EXTERNALS for arg in ("-d", f"{var}=")]
    candidates = find_rule_files(rules)
    if not candidates:
        tool.missing = f"no .yar/.yara rule files under {rules}"
        return tool
    # Compile each file on its own first and leave out the broken ones, as guard does;
    # the CLI would otherwise refuse the whole set.
    yarac = shutil.which("yarac")
    good: list[Path] = []
    for path in candidates:
        if yarac:
            check = _run_quiet([yarac, "-w", *defines, str(path), os.devnull])
        else:
            empty = scratch / "empty"
            empty.write_bytes(b"")
            check = _run_quiet([yara, "-w", *defines, str(path), str(empty)])
        if check is not None and check.returncode == 0:
            good.append(path)
        else:
            why = _tail(check.stderr, 1) if check is not None else "could not run yarac"
            tool.notes.append(f"yara: left out rule file {path}: {why}")
    if not good:
        tool.missing = f"no rule file under {rules} compiles"
        return tool
    # One namespace per file, as guard does, so equal rule names in two files do not clash.
    sources = [f"{i}_{p.stem.replace(':', '_')}:{p}" for i, p in enumerate(good)]
    common = [yara, "-r", "-N", "-w", "-p", str(jobs), *defines]
    if precompile:
        if yarac is None:
            tool.missing = f"--yara-precompile needs yarac ({INSTALL_HINT})"
            return tool
        compiled = scratch / "rules.yarc"
        res = _run_quiet([yarac, "-w", *defines, *sources, str(compiled)], timeout=600)
        if res is None or res.returncode != 0:
            tool.missing = f"yarac failed: {_tail(res.stderr, 3) if res else 'did not run'}"
            return tool
        tool.build = lambda d: [[*common, "-C", str(compiled), str(d)]]
        tool.notes.append(f"yara: {len(good)} rule file(s) precompiled with yarac, run with -C")
    else:
        tool.build = lambda d: [[*common, *sources, str(d)]]
        tool.notes.append(f"yara: {len(good)} rule file(s) compiled by the CLI on every run")
    return tool


def xargs_tool(name: str, argv: Sequence[str], jobs: int) -> Tool:
    exe = shutil.which(argv[0])
    find, xargs = shutil.which("find"), shutil.which("xargs")
    if exe is None or find is None or xargs is None:
        missing = [n for n, p in ((argv[0], exe), ("find", find), ("xargs", xargs)) if p is None]
        return Tool(name, None, missing=f"{', '.join(missing)} not installed ({INSTALL_HINT})")
    return Tool(name, lambda d: [
        [find, str(d), "-type", "f", "-print0"],
        [xargs, "-0", "-n", str(XARGS_BATCH), "-P", str(jobs), exe, *argv[1:]],
    ])


def run_pipeline(stages: Sequence[Sequence[str]], env: dict[str, str] | None
                 ) -> tuple[float, list[int], str]:
    """Run *stages* piped together, the last one's stdout to /dev/null.

    Returns (wall seconds, exit code of every stage, tail of the combined stderr).
    """
    with tempfile.TemporaryFile() as err:
        procs: list[subprocess.Popen[bytes]] = []
        start = time.perf_counter()
        try:
            for k, argv in enumerate(stages):
                last = k == len(stages) - 1
                prev_out = procs[-1].stdout if procs else None
                procs.append(subprocess.Popen(
                    list(argv), stdin=prev_out if prev_out is not None else subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL if last else subprocess.PIPE, stderr=err, env=env))
                if prev_out is not None:
                    prev_out.close()  # so the producer gets SIGPIPE if the consumer dies
            codes = [p.wait() for p in procs]
        except OSError as exc:
            for p in procs:
                p.kill()
                p.wait()
            return time.perf_counter() - start, [127], str(exc)
        elapsed = time.perf_counter() - start
        err.seek(0)
        text = err.read()[-4000:].decode("utf-8", "replace")
    return elapsed, codes, _tail(text)


def time_tool(tool: Tool, corpus: CorpusInfo, repeat: int) -> Result:
    res = Result(corpus.name, tool.name, corpus.files, corpus.megabytes)
    if tool.build is None:
        res.status, res.detail = "missing", tool.missing
        return res
    stages = tool.build(Path(corpus.path))
    for run in range(repeat + 1):  # run 0 is the warm-up
        elapsed, codes, err = run_pipeline(stages, tool.env)
        res.exit_codes.append(codes[-1])
        bad = codes[-1] not in tool.ok_codes or any(c != 0 for c in codes[:-1])
        if bad:
            res.status = "error"
            res.detail = f"exit {'/'.join(map(str, codes))}: {err}".strip()
            return res
        if run > 0:
            res.all_seconds.append(elapsed)
    res.seconds = min(res.all_seconds)
    res.files_per_s = corpus.files / res.seconds
    res.mb_per_s = corpus.megabytes / res.seconds
    return res


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------

def _first_line(argv: Sequence[str]) -> str:
    res = _run_quiet(argv)
    if res is None or res.returncode != 0:
        return "not installed"
    out = (res.stdout or res.stderr).strip().splitlines()
    return out[0] if out else "unknown"


def libmagic_version() -> str:
    name = ctypes.util.find_library("magic")
    if name:
        try:
            version = int(ctypes.CDLL(name).magic_version())
            return f"{version // 100}.{version % 100:02d}"
        except (OSError, AttributeError):
            pass
    return "not found"


def machine_info(workdir: Path, guard: Tool) -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    guard_cmd = guard.describe(Path("CORPUS")) if guard.build else guard.missing
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu": cpu,
        "memory": mem,
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()} "
                  f"({sys.executable})",
        "yara": _first_line(["yara", "--version"]),
        "libmagic": libmagic_version(),
        "file": _first_line(["file", "--version"]),
        "sha256sum": _first_line(["sha256sum", "--version"]),
        "guard": guard_cmd,
        "workdir": str(workdir),
    }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_table(results: Sequence[Result]) -> str:
    """The table; a missing or failed tool gets its reason in place of the figures."""
    head = ("corpus", "tool", "files", "MB", "seconds", "files/s", "MB/s", "guard ×")
    right = (False, False, True, True, True, True, True, True)
    rows: list[tuple[list[str], str]] = []  # (aligned cells, free text after them)
    for r in results:
        cells = [r.corpus, r.tool, f"{r.files:,}", f"{r.megabytes:.1f}"]
        if r.status != "ok":
            reason = r.detail.splitlines()[0] if r.detail else ""
            rows.append((cells, f"{r.status.upper()}: {reason}"))
            continue
        ratio = "(self)" if r.tool == "guard" else (
            "-" if r.guard_ratio is None else f"{r.guard_ratio:.2f}x")
        cells += [_fmt(r.seconds, ".3f"), _fmt(r.files_per_s, ",.0f"),
                  _fmt(r.mb_per_s, ",.1f"), ratio]
        rows.append((cells, ""))
    widths = [max([len(h)] + [len(c[i]) for c, _ in rows if i < len(c)])
              for i, h in enumerate(head)]

    def line(cells: Sequence[str], extra: str = "") -> str:
        # A MISSING/ERROR row has only the first four cells: zip stops there.
        out = [c.rjust(w) if r else c.ljust(w)
               for c, w, r in zip(cells, widths, right, strict=False)]
        return "  ".join(out + ([extra] if extra else [])).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(head), sep, *(line(c, x) for c, x in rows)])


def target_verdict(results: Sequence[Result]) -> dict[str, Any]:
    """Guard's target: files/s at least the yara CLI's on every corpus where both ran."""
    per: dict[str, float] = {}
    for r in results:
        if r.tool == "yara" and r.guard_ratio is not None:
            per[r.corpus] = r.guard_ratio
    if not per:
        return {"met": None, "ratios": per,
                "text": "target (guard >= yara CLI files/s): not assessed "
                        "(needs both guard and yara to run)"}
    met = all(v >= 1.0 for v in per.values())
    detail = ", ".join(f"{c}: {v:.2f}x" for c, v in per.items())
    return {"met": met, "ratios": per,
            "text": f"target (guard >= yara CLI files/s): {'MET' if met else 'MISSED'} "
                    f"(guard/yara {detail})"}


def fill_ratios(results: Sequence[Result]) -> None:
    guard = {r.corpus: r.files_per_s for r in results if r.tool == "guard" and r.files_per_s}
    for r in results:
        if r.tool != "guard" and r.files_per_s and r.corpus in guard:
            r.guard_ratio = guard[r.corpus] / r.files_per_s


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Compare the throughput of `guard scan` with the yara CLI, file and "
                    "sha256sum over generated corpora of 1,000 and 10,000 files.")
    ap.add_argument("--quick", action="store_true",
                    help=f"one small corpus of {QUICK_SIZES[0]} files (smoke test)")
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",") if x],
                    help="comma-separated corpus sizes in files (default 1000,10000)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="timed runs per tool and corpus, best kept (default 3; "
                         "one untimed warm-up run comes first)")
    ap.add_argument("--tools", default=",".join(ALL_TOOLS),
                    help=f"comma-separated subset of {','.join(ALL_TOOLS)}")
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS,
                    help=f"source corpus with benign/ and executables/ (default {DEFAULT_CORPUS})")
    ap.add_argument("--rules", type=Path, default=DEFAULT_RULES,
                    help=f"YARA rules folder for guard and yara (default {DEFAULT_RULES})")
    ap.add_argument("--workdir", type=Path,
                    help="where to generate the corpora; kept, and reused by later runs with "
                         "the same sizes and seed (default: a temporary folder, removed)")
    ap.add_argument("--seed", type=int, default=1, help="corpus generator seed (default 1)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="yara -p threads and xargs -P processes for the peers "
                         "(default: nproc)")
    ap.add_argument("--guard", metavar="CMD",
                    help="command that runs guard (default: `guard` next to sys.executable, "
                         "else `python -m guard`)")
    ap.add_argument("--yara-precompile", action="store_true",
                    help="compile the rules once with yarac and run yara -C (default: give "
                         "yara the rule sources, compiled on every run)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(args.tools) - set(ALL_TOOLS)
    if unknown:
        ap.error(f"unknown tool(s): {', '.join(sorted(unknown))}")
    if args.repeat < 1 or args.jobs < 1:
        ap.error("--repeat and --jobs must be at least 1")
    if args.sizes is None:
        args.sizes = list(QUICK_SIZES if args.quick else FULL_SIZES)
    if not args.sizes or min(args.sizes) < 1:
        ap.error("--sizes needs positive numbers")
    return args


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    source = args.corpus.resolve()
    rules = args.rules.resolve()
    try:
        source_files(source)
    except FileNotFoundError as exc:
        log(f"bench_scan: {exc}")
        return 2

    temp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="guard-bench-")) if temp else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="scratch-", dir=workdir))
    try:
        # guard's compiled-rules cache goes in the work folder, not the user's ~/.cache.
        guard_env = dict(os.environ, XDG_CACHE_HOME=str(scratch / "xdg-cache"))
        tools: list[Tool] = []
        for name in args.tools:
            if name == "guard":
                tools.append(guard_tool(rules, args.guard, guard_env))
            elif name == "yara":
                tools.append(yara_tool(rules, args.jobs, args.yara_precompile, scratch))
            elif name == "file":
                tools.append(xargs_tool("file", ["file", "--mime-type", "-b"], args.jobs))
            else:
                tools.append(xargs_tool("sha256sum", ["sha256sum"], args.jobs))
        info = machine_info(workdir, next((t for t in tools if t.name == "guard"),
                                          Tool("guard", None, missing="not selected")))

        corpora: list[CorpusInfo] = []
        results: list[Result] = []
        for n in args.sizes:
            t0 = time.perf_counter()
            corpus = prepare_corpus(workdir, n, source, args.seed)
            how = "reused" if corpus.reused else f"generated in {time.perf_counter() - t0:.1f} s"
            log(f"corpus {corpus.name}: {corpus.megabytes:.1f} MB, {how} at {corpus.path}")
            corpora.append(corpus)
            for tool in tools:
                if tool.build is not None:
                    log(f"  timing {tool.name}: 1 warm-up + {args.repeat} run(s)")
                results.append(time_tool(tool, corpus, args.repeat))
        fill_ratios(results)
        target = target_verdict(results)
        notes = [n for t in tools for n in t.notes]
        commands = {t.name: t.describe(Path("CORPUS")) for t in tools if t.build is not None}
        failed = [r for r in results if r.status == "error"]
        failed += [r for r in results
                   if r.status == "missing" and any(t.fatal_missing and t.name == r.tool
                                                    for t in tools)]

        if args.json:
            print(json.dumps({
                "machine": info, "repeat": args.repeat, "jobs": args.jobs, "seed": args.seed,
                "corpora": [asdict(c) for c in corpora], "commands": commands,
                "results": [asdict(r) for r in results], "target": target, "notes": notes,
            }, indent=2))
        else:
            print("machine: " + ", ".join(f"{k}={info[k]}" for k in
                                          ("nproc", "cpu", "memory")))
            for key in ("python", "yara", "libmagic", "file", "sha256sum", "guard", "os"):
                print(f"  {key}: {info[key]}")
            print(f"timing: wall clock, best of {args.repeat} after 1 warm-up; "
                  f"peers use {args.jobs} job(s); MB = 10^6 bytes")
            for c in corpora:
                mix = ", ".join(f"{k} {v}" for k, v in c.composition.items())
                print(f"corpus {c.name}: {c.megabytes:.1f} MB, seed {c.seed} ({mix})")
            print()
            print(render_table(results))
            print()
            print(target["text"])
            for note in notes:
                print(f"note: {note}")
            missing = [r for r in results if r.status == "missing"]
            if missing:
                print(f"note: missing tools are skipped; install with: {INSTALL_HINT}")
            for r in failed:
                print(f"FAILED: {r.tool} on {r.corpus}: {r.detail}")
        return 1 if failed else 0
    finally:
        shutil.rmtree(workdir if temp else scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
