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
from typing import TYPE_CHECKING, Iterator, Sequence

from . import __version__
from .errors import ConfigError, GuardError, LockedError
from .identify.names import printable
from .verdict import Level, Verdict

if TYPE_CHECKING:        # the scanner (YARA, libmagic, pefile) loads only for commands that scan
    from .scanner import Scanner

EXIT_CLEAN = 0
EXIT_FLAGGED = 1
EXIT_ERROR = 2
EXIT_CONFIG = 10
EXIT_LOCKED = 12
EXIT_NOT_RUNNING = 3
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

    cfg = argparse.ArgumentParser(add_help=False)
    cfg.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                     help="configuration file (default: $GUARD_CONFIG, the OS default path, "
                     "or the embedded default)")
    for sp in (scan,):
        sp.add_argument("--config", metavar="FILE", help=argparse.SUPPRESS)

    sub.add_parser("run", parents=[cfg], help="run the agent: watch folders, quarantine, log")
    st = sub.add_parser("status", parents=[cfg], help="show the running agent's state")
    st.add_argument("--json", action="store_true")
    fo = sub.add_parser("folders", parents=[cfg],
                        help="list the known download and chat folders and which are watched")
    fo.add_argument("--json", action="store_true")
    cc = sub.add_parser("config", parents=[cfg], help="configuration tools")
    ccs = cc.add_subparsers(dest="config_command", metavar="ACTION")
    ccs.add_parser("check", parents=[cfg], help="validate the configuration and print it")

    q = sub.add_parser("quarantine", parents=[cfg], help="review, release or purge quarantined files")
    qs = q.add_subparsers(dest="q_command", metavar="ACTION")
    ql = qs.add_parser("list", parents=[cfg], help="list quarantined items")
    ql.add_argument("--json", action="store_true")
    qsh = qs.add_parser("show", parents=[cfg], help="show one item's record")
    qsh.add_argument("id")
    qr = qs.add_parser("restore", parents=[cfg], help="put an item back (never overwrites)")
    qr.add_argument("id")
    qr.add_argument("--to", metavar="PATH", help="restore into this folder or file path")
    qp = qs.add_parser("purge", parents=[cfg], help="delete items for good")
    qp_target = qp.add_mutually_exclusive_group(required=True)
    qp_target.add_argument("id", nargs="?")
    qp_target.add_argument("--older-than", type=_positive_float, metavar="DAYS")

    lg = sub.add_parser("log", parents=[cfg], help="the audit log")
    lgs = lg.add_subparsers(dest="log_command", metavar="ACTION")
    lv = lgs.add_parser("verify", parents=[cfg], help="check the hash chain of the audit log")
    lv.add_argument("--file", metavar="PATH", help="log file (default: from the configuration)")
    lv.add_argument("--key-file", metavar="PATH",
                    help="the log's HMAC key (default: the configuration's log_key_file, "
                         "state_dir/audit.key)")
    lv.add_argument("--last-seq", type=int, metavar="N",
                    help="the newest seq known to have been written (from the SIEM's copy): "
                         "a log that ends before it was cut short")
    lv.add_argument("--json", action="store_true")
    lt = lgs.add_parser("tail", parents=[cfg], help="print records for people")
    lt.add_argument("-f", "--follow", action="store_true")
    lt.add_argument("-n", type=int, default=20, metavar="N", help="last N records (default 20)")
    lt.add_argument("--json", action="store_true")
    lt.add_argument("--file", metavar="PATH", help="log file (default: from the configuration)")

    bg = sub.add_parser("break-glass", parents=[cfg],
                        help="switch the agent to monitor mode at once (root), or back")
    bg.add_argument("state", choices=["on", "off", "status"])

    from . import allow_cli
    allow_cli.add_parser(sub, [cfg])

    doc = sub.add_parser("doctor", parents=[cfg],
                         help="check the installation: exit 0 healthy, 1 degraded")
    doc.add_argument("--json", action="store_true")

    svc = sub.add_parser("service", help="install or remove the Windows service (on Linux and "
                         "macOS: systemd and launchd files in packaging/)")
    svc.add_argument("action", choices=["install", "remove", "start", "stop", "restart",
                                        "debug"])

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
    handlers = {
        ("scan", None): cmd_scan, ("run", None): cmd_run, ("status", None): cmd_status,
        ("folders", None): cmd_folders, ("config", "check"): cmd_config_check,
        ("rules", "check"): cmd_rules_check,
        ("quarantine", "list"): cmd_q_list, ("quarantine", "show"): cmd_q_show,
        ("quarantine", "restore"): cmd_q_restore, ("quarantine", "purge"): cmd_q_purge,
        ("log", "verify"): cmd_log_verify, ("log", "tail"): cmd_log_tail,
        ("break-glass", None): cmd_break_glass,
        ("allow", None): lambda a: _allow(a),
        ("doctor", None): cmd_doctor, ("service", None): cmd_service,
    }
    sub_action = (getattr(args, "rules_command", None) or getattr(args, "q_command", None)
                  or getattr(args, "log_command", None) or getattr(args, "config_command", None))
    handler = handlers.get((args.command, sub_action))
    try:
        if handler is not None:
            return handler(args)
    except LockedError as exc:
        _print_error(str(exc), "see `guard status`; stop the other instance first")
        return EXIT_LOCKED
    except ConfigError as exc:
        _print_error(str(exc), "run `guard config check --config FILE` after fixing it")
        return EXIT_CONFIG
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
    from .scanner import load_rules
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
    from .identify.containers import Limits
    from .scanner import ScanOptions, Scanner, load_rules
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


# --- the agent and its tools -----------------------------------------------------------------

def _config(args: argparse.Namespace):
    from .config import load_config
    return load_config(getattr(args, "config", None))


def cmd_run(args: argparse.Namespace) -> int:
    from .daemon import Daemon
    config = _config(args)
    if not config.watch:
        _print_error("no folder to watch: none of the known download or chat folders exists",
                     "add a [[watch]] path to the configuration (see `guard folders`)")
        return EXIT_CONFIG
    daemon = Daemon(config, getattr(args, "config", None) or os.environ.get("GUARD_CONFIG"))
    print(f"guard {__version__}: {config.mode} mode, watching "
          f"{', '.join(str(w.path) for w in config.watch)}; log {config.log_file}",
          file=sys.stderr)
    return daemon.run_forever()


def cmd_status(args: argparse.Namespace) -> int:
    from .agent.status import read_status
    config = _config(args)
    status = read_status(config)
    if status is None:
        if args.json:
            print(json.dumps({"state": "not running", "config": config.source}))
        else:
            print(f"guard is not running (config: {config.source})")
        return EXIT_NOT_RUNNING
    if args.json:
        print(json.dumps(status))
        return EXIT_CLEAN
    c = status["counters"]
    print(f"guard {status['version']} {status['state']}, pid {status['pid']}, "
          f"{status['mode']} mode{', meeting: strict policy on' if status['meeting'] else ''}")
    for w in status["watched"]:
        print(f"  watching {w['path']} ({w['source']})")
    for w in status.get("not_watched", []):
        print(f"  NOT watching: {w}")
    print(f"  queue {status['queue_depth']}; scanned {c['scanned']}: {c['malicious']} "
          f"malicious, {c['suspicious']} suspicious; quarantined {c['quarantined']}; "
          f"errors {c['errors']}")
    lc = status.get("launch_control") or {}
    if lc:
        print(f"  launch control: {lc.get('backend')}"
              + (f" ({lc['why']})" if lc.get("why") else "")
              + f"; {lc.get('denied', 0)} denied, {lc.get('allowed', 0)} allowed, "
              f"{lc.get('timeouts', 0)} answered by the fail mode")
    al = status.get("allowlist") or {}
    if al:
        print(f"  allowlist: {al.get('entries', 0)} entries from {al.get('path')}"
              + (f"; REFUSED EDIT: {al['error']}" if al.get("error") else ""))
        pull = al.get("pull") or {}
        if pull:
            print(f"  allowlist source: {pull.get('url')}, version "
                  f"{pull.get('applied_version') or 'none yet'}"
                  + (f"; last error: {pull['last_error']}" if pull.get("last_error") else ""))
    if status.get("break_glass"):
        print("  BREAK-GLASS: monitor mode in force")
    if status.get("last_error"):
        print(f"  last error: {status['last_error']}")
    return EXIT_CLEAN


def cmd_folders(args: argparse.Namespace) -> int:
    from .folders import known_folders
    config = _config(args)
    watched = {str(w.path) for w in config.watch}
    rows = []
    for kf in known_folders():
        sources = getattr(kf, "sources", None) or (getattr(kf, "source", ""),)
        path = str(kf.path)
        rows.append({"path": path, "sources": list(sources), "exists": os.path.isdir(path),
                     "watched": path in watched, "note": getattr(kf, "note", "")})
    for w in config.watch:
        if str(w.path) not in {r["path"] for r in rows}:
            rows.append({"path": str(w.path), "sources": [w.source],
                         "exists": os.path.isdir(w.path), "watched": True, "note": "configured"})
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return EXIT_CLEAN
    for r in rows:
        print(f"{'watched' if r['watched'] else '-':8} {'exists' if r['exists'] else 'absent':7} "
              f"{','.join(r['sources']):18} {printable(r['path'])}"
              f"{'  (' + r['note'] + ')' if r['note'] else ''}")
    return EXIT_CLEAN


def cmd_config_check(args: argparse.Namespace) -> int:
    import dataclasses
    config = _config(args)
    out = {k: (str(v) if isinstance(v, os.PathLike) else v)
           for k, v in dataclasses.asdict(config).items()}
    print(json.dumps(out, indent=1, default=str))
    return EXIT_CLEAN


def _vault(args: argparse.Namespace):
    from .actions.quarantine import Vault
    config = _config(args)
    return config, Vault(config.quarantine_dir)


def _audit(config, record: dict) -> None:
    """Log an admin action into the chained log (safe beside a running agent: every
    write takes the log's lock and continues the chain from the file)."""
    from .audit.writer import open_for
    with open_for(config) as log:
        log.write(record)


def cmd_q_list(args: argparse.Namespace) -> int:
    _, vault = _vault(args)
    items = vault.list()
    for item in items:
        m = item.meta
        if args.json:
            print(json.dumps({"id": item.id, **m}))
        else:
            print(f"{item.id}  {m.get('quarantined_at', '?')}  {m.get('verdict', '?'):10} "
                  f"{printable(m.get('original_path', '?'))}")
    if not args.json:
        print(f"{len(items)} item(s) in {vault.folder}")
    return EXIT_CLEAN


def cmd_q_show(args: argparse.Namespace) -> int:
    _, vault = _vault(args)
    item = vault.get(args.id)
    print(json.dumps({"id": item.id, **item.meta}, indent=1))
    return EXIT_CLEAN


def cmd_q_restore(args: argparse.Namespace) -> int:
    from .audit.record import admin_record
    from .errors import QuarantineError
    from pathlib import Path
    config, vault = _vault(args)
    try:
        item = vault.get(args.id)
        target = vault.restore(args.id, Path(args.to) if args.to else None)
    except QuarantineError as exc:
        _audit(config, admin_record("restore", outcome="failure", message=str(exc),
                                    quarantine_id=args.id))
        raise
    try:
        from .sources.provenance import Provenance, write_provenance_linux
        prov = item.meta.get("provenance") or {}
        if prov:
            fields = {k: v for k, v in prov.items() if k in Provenance.__dataclass_fields__}
            if "where_froms" in fields:
                fields["where_froms"] = tuple(fields["where_froms"])
            write_provenance_linux(target, Provenance(**fields))
    except Exception:
        pass          # provenance is best effort; the file itself is back
    _audit(config, admin_record("restore", message=f"restored to {target}", path=str(target),
                                quarantine_id=args.id, sha256=item.meta.get("sha256")))
    print(f"restored {args.id} to {printable(str(target))}")
    return EXIT_CLEAN


def cmd_q_purge(args: argparse.Namespace) -> int:
    from .audit.record import admin_record
    config, vault = _vault(args)
    items = vault.older_than(args.older_than) if args.older_than else [vault.get(args.id)]
    for item in items:
        vault.purge(item.id)
        _audit(config, admin_record("purge", message="deleted from quarantine",
                                    path=item.meta.get("original_path", ""),
                                    quarantine_id=item.id, sha256=item.meta.get("sha256")))
        print(f"purged {item.id} ({printable(item.meta.get('original_path', '?'))})")
    if not items:
        print("nothing to purge")
    return EXIT_CLEAN


def _log_path(args: argparse.Namespace):
    from pathlib import Path
    return Path(args.file) if getattr(args, "file", None) else _config(args).log_file


def cmd_log_verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .audit.verify import verify_log
    from .audit.writer import load_key
    if args.key_file:
        key = load_key(Path(args.key_file))
        if key is None:
            raise GuardError("no such key file", path=args.key_file)
    else:
        key_path = _config(args).audit_key_path
        unreadable = key_path is not None and key_path.exists() and not os.access(
            key_path, os.R_OK)                 # not the agent's user: links only
        key = load_key(key_path) if key_path is not None and not unreadable else None
    result = verify_log(_log_path(args), key, last_seq=args.last_seq)
    note = ("" if key is not None or not result.hashes_unchecked else
            f"{result.hashes_unchecked} signed records: their links were checked, their "
            f"signatures not (no key; run as the agent's user or pass --key-file)")
    if args.json:
        print(json.dumps({"ok": result.ok, "records": result.records, "files": result.files,
                          "first_bad_seq": result.first_bad_seq, "keyed": key is not None,
                          "signatures_unchecked": result.hashes_unchecked if key is None else 0,
                          "problems": [p.__dict__ for p in result.problems]}))
    else:
        for p in result.problems:
            print(p)
        if note:
            print(f"note: {note}")
        print(f"{'OK' if result.ok else 'TAMPERED'}: {result.records} records in "
              f"{len(result.files)} file(s)"
              + (f", first bad record {result.first_bad_seq}" if not result.ok else ""))
    return EXIT_CLEAN if result.ok else EXIT_FLAGGED


def cmd_log_tail(args: argparse.Namespace) -> int:
    import collections
    from .audit.verify import format_record, iter_records
    path = _log_path(args)
    emit = (lambda r: print(json.dumps(r), flush=True)) if args.json else \
        (lambda r: print(format_record(r), flush=True))
    if not args.follow:
        for rec in collections.deque(iter_records(path), maxlen=max(0, args.n)):
            emit(rec)
        return EXIT_CLEAN
    for rec in iter_records(path, follow=True):
        emit(rec)
    return EXIT_CLEAN


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import as_json, report, run_checks
    checks = run_checks(getattr(args, "config", None))
    text, code = report(checks)
    print(json.dumps(as_json(checks), indent=1) if args.json else text)
    return code


def cmd_service(args: argparse.Namespace) -> int:
    from .service import ServiceUnavailable, handle
    try:
        return handle(args.action)
    except ServiceUnavailable as exc:
        _print_error(str(exc))
        return EXIT_ERROR


def cmd_break_glass(args: argparse.Namespace) -> int:
    """The documented emergency switch: a file only root can create (it lives in the
    root-only state folder) puts the agent in monitor mode within a second."""
    from .audit.record import actor, admin_record
    config = _config(args)
    flag = config.break_glass_file
    if args.state == "status":
        print(f"break-glass is {'ON: monitor mode in force' if flag.exists() else 'off'} "
              f"({flag})")
        return EXIT_CLEAN
    if args.state == "on":
        flag.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(flag, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        os.write(fd, f"set by {actor()}\n".encode())
        os.close(fd)
    else:
        flag.unlink(missing_ok=True)
    _audit(config, admin_record("break-glass", message=f"break-glass {args.state} by command",
                                file=str(flag)))
    now = "monitor mode in force" if args.state == "on" else "configured mode restored"
    print(f"break-glass {args.state}: {now}")
    return EXIT_CLEAN


def _allow(args: argparse.Namespace) -> int:
    from . import allow_cli
    return allow_cli.dispatch(args, _config(args))
