"""`guard allow`: add, remove, list and check allowlist entries.

Functions take the parsed arguments and the Config and return an exit code; errors are
raised as GuardError subclasses for ``guard.cli`` to print. Every change (and every
refused change) is written to the audit log through the ``audit`` callback.

Wiring in ``guard/cli.py``::

    allow_cli.add_parser(sub, [cfg])                       # in build_parser()
    ("allow", None): lambda a: allow_cli.dispatch(a, _config(a), ...)   # in main()

``dispatch`` writes audit records to ``config.log_file`` itself unless given ``audit``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import GuardError
from .policy.allowlist import (KINDS, Allowlist, AllowlistError, Entry, add_entry,
                               load_allowlist, remove_entries)

EXIT_OK = 0
EXIT_NOT_ALLOWED = 1
_SIGNER_READ_BYTES = 64 << 20      # what launch control reads for a signature check
_BLOCK = 1 << 20

Audit = Callable[[dict[str, Any]], None]


class AllowCommandError(GuardError):
    """A `guard allow` command that cannot run as given (bad arguments, unreadable file)."""


# --- argparse ---------------------------------------------------------------------------

def add_parser(subparsers: Any, parents: Sequence[argparse.ArgumentParser] = ()
               ) -> argparse.ArgumentParser:
    """Register `allow` and its actions on *subparsers* (from add_subparsers())."""
    parents = list(parents)
    allow = subparsers.add_parser(
        "allow", parents=parents, help="manage the allowlist of programs that may run",
        description="The allowlist decides which programs in watched folders may run. "
        "Entries match by sha256, by path glob or by verified signer.")
    actions = allow.add_subparsers(dest="allow_command", metavar="ACTION")

    add = actions.add_parser("add", parents=parents, help="allow a file, hash, path or signer",
                             description="Add one entry. PATH adds the sha256 of that file.")
    _target_args(add)
    add.add_argument("--reason", required=True, help="why (a ticket number helps reviewers)")
    add.add_argument("--expires", type=_date, metavar="YYYY-MM-DD",
                     help="the entry stops matching on this day")

    rm = actions.add_parser("remove", parents=parents, help="remove entries",
                            description="Remove every entry with this value. PATH removes "
                            "the entries for that file's sha256.")
    _target_args(rm)

    ls = actions.add_parser("list", parents=parents, help="list the entries")
    ls.add_argument("--json", action="store_true", help="one JSON document")

    ck = actions.add_parser("check", parents=parents,
                            help="would this file be allowed to run? (exit 0 yes, 1 no)")
    ck.add_argument("file", metavar="PATH")
    ck.add_argument("--json", action="store_true", help="one JSON document")
    return allow


def _target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", metavar="PATH", help="a file: its sha256 is used")
    p.add_argument("--sha256", metavar="HASH")
    p.add_argument("--path", metavar="GLOB", help="absolute path glob (fnmatch: * also "
                   "matches /)")
    p.add_argument("--signer", metavar="NAME", help="Authenticode publisher or Apple Team ID")


def _date(text: str) -> _dt.date:
    try:
        return _dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


# --- dispatch ---------------------------------------------------------------------------

def dispatch(args: argparse.Namespace, config: Any, audit: Audit | None = None) -> int:
    """Run the `guard allow` action in *args*. Returns the exit code."""
    action = getattr(args, "allow_command", None)
    handlers = {"add": cmd_add, "remove": cmd_remove, "list": cmd_list, "check": cmd_check}
    if action not in handlers:
        raise AllowCommandError("choose an action: guard allow add|remove|list|check "
                                "(see guard allow --help)")
    return handlers[action](args, config, audit)


def cmd_add(args: argparse.Namespace, config: Any, audit: Audit | None = None) -> int:
    audit = audit or _log_writer(config)
    path = Path(config.allowlist)
    kind, value, file = _target(args)
    expires = getattr(args, "expires", None)
    try:
        if expires is not None and expires <= _dt.date.today():
            raise AllowCommandError(f"--expires {expires} is not in the future: the entry "
                                    "would never match")
        entry = add_entry(path, kind, value, args.reason, _actor(), expires)
    except GuardError as exc:
        audit(_record("allow-add", path, kind, value, file, outcome="failure",
                      message=str(exc), reason=args.reason, expires=expires))
        raise
    audit(_record("allow-add", path, kind, value, file, entry=entry,
                  message=f"allowlisted {kind} {value}", reason=args.reason, expires=expires))
    what = f"{file} (sha256 {value})" if file else f"{kind} {value}"
    print(f"added {entry.describe()} to {path}: {what}")
    return EXIT_OK


def cmd_remove(args: argparse.Namespace, config: Any, audit: Audit | None = None) -> int:
    audit = audit or _log_writer(config)
    path = Path(config.allowlist)
    kind, value, file = _target(args)
    try:
        count = remove_entries(path, kind, value)
    except GuardError as exc:
        audit(_record("allow-remove", path, kind, value, file, outcome="failure",
                      message=str(exc)))
        raise
    audit(_record("allow-remove", path, kind, value, file, removed=count,
                  message=f"removed {count} {kind} entr{'y' if count == 1 else 'ies'} for "
                  f"{value}"))
    print(f"removed {count} entr{'y' if count == 1 else 'ies'} from {path}: {kind} {value}")
    return EXIT_OK


def cmd_list(args: argparse.Namespace, config: Any, audit: Audit | None = None) -> int:
    allowlist = load_allowlist(Path(config.allowlist))
    today = _dt.date.today()
    if getattr(args, "json", False):
        doc = {"source": str(allowlist.source), "missing": allowlist.missing,
               "fingerprint": allowlist.fingerprint,
               "entries": [{**e.to_dict(), "expired": e.expired(today)}
                           for e in allowlist.entries]}
        print(json.dumps(doc, indent=2, ensure_ascii=False))
        return EXIT_OK
    if allowlist.missing:
        print(f"{allowlist.source}: no file: nothing is allowlisted")
        return EXIT_OK
    n = len(allowlist.entries)
    print(f"{allowlist.source}: {n} entr{'y' if n == 1 else 'ies'}")
    for e in allowlist.entries:
        state = ""
        if e.expires is not None:
            state = (f", EXPIRED {e.expires}" if e.expired(today)
                     else f", expires {e.expires}")
        print(f"{e.index + 1:>4}  line {e.line:<5} {e.kind:<6} {e.value}")
        print(f"{'':>17}{e.reason} (added by {e.added_by}{state})")
    return EXIT_OK


def cmd_check(args: argparse.Namespace, config: Any, audit: Audit | None = None) -> int:
    """Would launch control allow this file? Uses the same facts as the agent: the
    sha256, the real absolute path and the verified signers."""
    real = os.path.realpath(args.file)
    sha256, head = _hash_file(real, keep=_SIGNER_READ_BYTES)
    info = _signature(head, config)
    verified = tuple(info.names) if info.verified else ()
    unverified = tuple(info.claimed) + (() if info.verified else tuple(info.names))
    allowlist = load_allowlist(Path(config.allowlist))
    today = _dt.date.today()
    entry = allowlist.match(sha256, real, verified, today)
    explanation = allowlist.explain(sha256, real, verified, today, unverified)
    if getattr(args, "json", False):
        print(json.dumps({"allowed": entry is not None, "path": real, "sha256": sha256,
                          "entry": entry.to_dict() if entry else None,
                          "signature": {"names": list(info.names), "verified": info.verified,
                                        "claimed": list(info.claimed), "error": info.error,
                                        "scheme": info.scheme},
                          "allowlist": str(allowlist.source), "explanation": explanation},
                         indent=2, ensure_ascii=False))
    else:
        print(explanation)
        print(f"signature: {_describe_signature(info)}")
    return EXIT_OK if entry is not None else EXIT_NOT_ALLOWED


# --- helpers ----------------------------------------------------------------------------

def _target(args: argparse.Namespace) -> tuple[str, str, str]:
    """(kind, value, file) from PATH / --sha256 / --path / --signer; file is the PATH
    given (a sha256 entry), or ""."""
    given = [(k, getattr(args, k, None)) for k in KINDS if getattr(args, k, None)]
    file = getattr(args, "file", None)
    if file:
        given.append(("file", file))
    if len(given) != 1:
        raise AllowCommandError("name exactly one of PATH, --sha256 HASH, --path GLOB or "
                                "--signer NAME")
    kind, value = given[0]
    if kind != "file":
        return kind, value, ""
    real = os.path.realpath(value)
    sha256, _ = _hash_file(real, keep=0)
    return "sha256", sha256, real


def _hash_file(path: str, keep: int) -> tuple[str, bytes]:
    """(sha256 of the whole file, its first *keep* bytes). Refuses non-regular files."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise AllowCommandError(f"cannot open: {exc.strerror or exc}", path) from None
    h = hashlib.sha256()
    head = bytearray()
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise AllowCommandError("not a regular file", path)
        while True:
            chunk = os.read(fd, _BLOCK)
            if not chunk:
                break
            h.update(chunk)
            if len(head) < keep:
                head += chunk[:keep - len(head)]
    except OSError as exc:
        raise AllowCommandError(f"cannot read: {exc.strerror or exc}", path) from None
    finally:
        os.close(fd)
    return h.hexdigest(), bytes(head)


def _signature(data: bytes, config: Any):
    from .identify.filetype import exact_kind
    from .identify.signer import SignerInfo, signers_of

    kind = exact_kind(data[:4096], data[-512:])[0]
    if kind not in ("pe", "macho", "macho-fat"):
        return SignerInfo(error="not a signed program format (PE or Mach-O)")
    return signers_of(data, kind, _extra_roots(config))


def _extra_roots(config: Any) -> bytes | None:
    """PEM roots for in-house Authenticode signing, when the configuration names a file
    (``authenticode_roots``; absent from Config until the lead adds it)."""
    roots = getattr(config, "authenticode_roots", None)
    if not roots:
        return None
    try:
        return Path(roots).read_bytes()
    except OSError as exc:
        raise AllowCommandError(f"cannot read the trusted roots: {exc.strerror or exc}",
                                str(roots)) from None


def _describe_signature(info: Any) -> str:
    if info.verified:
        return f"verified Authenticode publisher {', '.join(info.names)}"
    if info.scheme == "team-id":
        return f"Apple team id {info.names[0]} (not verified: {info.error})"
    if info.claimed:
        return f"claims {', '.join(info.claimed)}, but {info.error}"
    return info.error or "none"


def _actor() -> str:
    from .audit.record import actor
    return actor()


def _record(action: str, allowlist: Path, kind: str, value: str, file: str, *,
            outcome: str = "success", message: str = "", entry: Entry | None = None,
            reason: str = "", expires: _dt.date | None = None, removed: int | None = None
            ) -> dict[str, Any]:
    from .audit.record import admin_record

    rec = admin_record(action, outcome=outcome, message=message, path=file,
                       allowlist={"path": str(allowlist), "kind": kind, "value": value,
                                  "reason": reason or None,
                                  "expires": expires.isoformat() if expires else None,
                                  "entry": entry.to_dict() if entry else None,
                                  "removed": removed})
    rec["guard"]["allowlist"] = {k: v for k, v in rec["guard"]["allowlist"].items()
                                 if v is not None}
    rec["event"]["category"] = ["configuration"]
    return rec


def _log_writer(config: Any) -> Audit:
    def write(record: dict[str, Any]) -> None:
        from .audit.writer import AuditLog
        with AuditLog(Path(config.log_file), max_bytes=int(config.log_max_mb * 1024 * 1024),
                      keep=config.log_keep) as log:
            log.write(record)
    return write


__all__ = ["AllowCommandError", "Allowlist", "AllowlistError", "add_parser", "cmd_add",
           "cmd_check", "cmd_list", "cmd_remove", "dispatch"]
