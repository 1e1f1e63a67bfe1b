"""Command line. The only place that prints errors and picks exit codes.

Exit codes of `guard scan` follow clamscan: 0 nothing flagged, 1 something flagged,
2 an error occurred (an unreadable file, a broken rule file, a bad argument).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Iterator, Sequence

from . import __version__
from .errors import GuardError
from .identify.containers import Limits
from .identify.names import printable
from .scanner import ScanOptions, Scanner, load_rules
from .verdict import Level, Verdict

EXIT_CLEAN = 0
EXIT_FLAGGED = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

_POOL_MIN_FILES = 24      # below this, starting worker processes costs more than it saves
_CHUNK = 16               # files per task sent to a worker


def _print_error(message: str, hint: str = "") -> None:
    print(f"guard: error: {message}", file=sys.stderr)
    if hint:
        print(f"guard: hint: {hint}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="guard", description="Stops executables disguised as "
                                "documents before they run.")
    p.add_argument("--version", action="version", version=f"guard {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    scan = sub.add_parser("scan", help="scan files and folders (recursively)",
                          description="Scan files and folders. Exit status: 0 nothing flagged, "
                          "1 something flagged, 2 an error occurred.")
    scan.add_argument("paths", nargs="+", metavar="PATH")
    scan.add_argument("--json", action="store_true", help="one JSON object per file per line")
    scan.add_argument("--rules", action="append", default=[], metavar="DIR",
                      help="extra YARA rule folder (repeatable), beside the bundled rules/")
    scan.add_argument("--no-bundled-rules", action="store_true",
                      help="use only the --rules folders")
    scan.add_argument("--follow-symlinks", action="store_true",
                      help="follow links that lead out of the folder being scanned")
    scan.add_argument("--all", action="store_true",
                      help="also print clean files in the human output")
    scan.add_argument("--max-size", type=_positive_float, default=100, metavar="MB",
                      help="larger files get hash and header checks only (default 100)")
    scan.add_argument("--timeout", type=_positive_float, default=10, metavar="S",
                      help="YARA time limit per file in seconds (default 10)")
    scan.add_argument("--jobs", "-j", type=int, default=0, metavar="N",
                      help="worker processes (default: one per CPU)")

    rules = sub.add_parser("rules", help="YARA rule tools")
    rsub = rules.add_subparsers(dest="rules_command", metavar="ACTION")
    check = rsub.add_parser("check", help="compile rule folders and list every broken file")
    check.add_argument("dirs", nargs="*", metavar="DIR")
    check.add_argument("--no-bundled-rules", action="store_true")
    return p


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "scan":
            return cmd_scan(args)
        if args.command == "rules" and args.rules_command == "check":
            return cmd_rules_check(args)
    except GuardError as exc:
        _print_error(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (guard scan ... | head); not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_CLEAN
    parser.print_help(sys.stderr)
    return EXIT_ERROR


def cmd_rules_check(args: argparse.Namespace) -> int:
    ruleset = load_rules(args.dirs, bundled=not args.no_bundled_rules)
    for f in ruleset.files:
        print(f"ok      {f}")
    for err in ruleset.errors:
        print(f"broken  {err}")
    print(f"{len(ruleset.files)} rule files compiled, {len(ruleset.errors)} broken")
    return EXIT_ERROR if ruleset.errors else EXIT_CLEAN


# Worker processes inherit the scanner through fork; set before the pool starts.
_worker_scanner: Scanner | None = None


def _scan_chunk(paths: list[str]) -> list[Verdict]:
    assert _worker_scanner is not None
    return [_worker_scanner.scan_file(p) for p in paths]


def _preload_parsers() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import oletools.olevba  # noqa: F401
        import py7zr  # noqa: F401
        import pycdlib  # noqa: F401


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def cmd_scan(args: argparse.Namespace) -> int:
    global _worker_scanner
    started = time.monotonic()
    ruleset = load_rules(args.rules, bundled=not args.no_bundled_rules)
    for err in ruleset.errors:
        print(f"guard: warning: {err} (file skipped; the other rules still load)",
              file=sys.stderr)
    options = ScanOptions(max_size_bytes=int(args.max_size * 1024 * 1024),
                          yara_timeout_s=args.timeout, follow_symlinks=args.follow_symlinks,
                          limits=Limits())
    scanner = Scanner(ruleset, options)
    out = _Output(args.json, args.all)

    targets = list(scanner.iter_targets(args.paths))
    to_scan = [p for p, ready in targets if ready is None]
    jobs = args.jobs if args.jobs > 0 else (os.cpu_count() or 1)
    results: dict[str, Verdict] = {}
    if jobs > 1 and len(to_scan) >= _POOL_MIN_FILES and "fork" in \
            multiprocessing.get_all_start_methods():
        _worker_scanner = scanner
        _preload_parsers()     # import once here, so forked workers share the modules
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            scanned = (v for batch in pool.map(_scan_chunk, _chunks(to_scan, _CHUNK))
                       for v in batch)
            out.emit_all(targets, scanned)
    else:
        out.emit_all(targets, (scanner.scan_file(p) for p in to_scan))

    elapsed = time.monotonic() - started
    out.summary(elapsed)
    if out.errors or ruleset.errors:
        return EXIT_ERROR
    return EXIT_FLAGGED if out.flagged else EXIT_CLEAN


class _Output:
    def __init__(self, as_json: bool, show_all: bool):
        self.as_json = as_json
        self.show_all = show_all
        self.counts = {Level.MALICIOUS: 0, Level.SUSPICIOUS: 0, Level.CLEAN: 0}
        self.scanned = 0
        self.skipped = 0
        self.errors = 0
        self.flagged = 0

    def emit_all(self, targets: list[tuple[str, Verdict | None]], scanned: Iterator[Verdict]
                 ) -> None:
        """Print in walk order: ready verdicts in place, scanned ones as they come back."""
        for _path, ready in targets:
            self.emit(ready if ready is not None else next(scanned))

    def emit(self, v: Verdict) -> None:
        if v.skipped:
            self.skipped += 1
        else:
            self.scanned += 1
            self.counts[v.level] += 1
        if v.error:
            self.errors += 1
        if v.flagged:
            self.flagged += 1
        if self.as_json:
            sys.stdout.write(json.dumps(v.to_dict(), ensure_ascii=True) + "\n")
        elif v.error:
            sys.stdout.write(f"{printable(v.path)}: ERROR: {v.error}\n")
        elif v.flagged or self.show_all:
            codes = ",".join(v.codes)
            text = v.summary or "clean"
            sys.stdout.write(f"{printable(v.path)}: {v.level.value.upper()}: {text}"
                             f"{f' [{codes}]' if codes else ''}\n")

    def summary(self, elapsed_s: float) -> None:
        line = (f"scanned {self.scanned} files: {self.counts[Level.MALICIOUS]} malicious, "
                f"{self.counts[Level.SUSPICIOUS]} suspicious, {self.errors} errors "
                f"in {elapsed_s:.2f} s")
        if self.skipped:
            line += f" ({self.skipped} skipped)"
        # Keep stdout pure JSON lines for SIEM pipelines; the summary goes to stderr there.
        print(line, file=sys.stderr if self.as_json else sys.stdout)
        sys.stdout.flush()
