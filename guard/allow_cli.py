"""`guard allow`: add, remove, list and check allowlist entries; keygen, sign and verify
the signed bundles agents pull (see ``guard.policy.distribution``).

Functions take the parsed arguments and the Config and return an exit code; errors are
raised as GuardError subclasses for ``guard.cli`` to print. Every change (and every
refused change) is written to the audit log through the ``audit`` callback. ``keygen``,
``sign`` and ``verify`` change nothing an agent enforces (they run on the admin's signing
machine) and write no audit record; each agent logs every version it applies.

Wiring in ``guard/cli.py``::

    allow_cli.add_parser(sub, [cfg])                       # in build_parser()
    ("allow", None): lambda a: allow_cli.dispatch(a, _config(a), ...)   # in main()

``dispatch`` writes audit records to ``config.log_file`` itself unless given ``audit``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import stat
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import GuardError
from .hashing import sha256_fd
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

    kg = actions.add_parser("keygen", parents=parents, help="make an Ed25519 signing key pair",
                            description="Make a key pair for signing allowlist bundles. Keep "
                            "the private key offline; give the public key to the agents.")
    kg.add_argument("--private", required=True, metavar="FILE",
                    help="private key to create (mode 0600; never overwritten)")
    kg.add_argument("--public", required=True, metavar="FILE",
                    help="public key to create (mode 0644; never overwritten)")

    sg = actions.add_parser("sign", parents=parents, help="sign the allowlist into a bundle "
                            "agents can pull", description="Sign ALLOWLIST (default: the "
                            "configuration's allowlist) into a bundle for agents to pull from "
                            "a URL. It must load as an allowlist. Agents apply only versions "
                            "higher than the one they have.")
    sg.add_argument("allowlist_file", nargs="?", metavar="ALLOWLIST")
    sg.add_argument("--key", required=True, metavar="PRIVATE_KEY",
                    help="Ed25519 private key (PEM, from `guard allow keygen`)")
    sg.add_argument("--version", type=_bundle_version, metavar="N", dest="bundle_version",
                    help="bundle version (default: the Unix time, or one more than the "
                    "version in --out when that is higher)")
    sg.add_argument("--out", metavar="FILE", help="write the bundle here (default: stdout)")

    vf = actions.add_parser("verify", parents=parents, help="check a signed bundle",
                            description="Verify a bundle (a file, - for stdin, or an http(s) "
                            "URL) as an agent would, and print its version and key.")
    vf.add_argument("bundle", metavar="BUNDLE")
    vf.add_argument("--pubkey", action="append", metavar="FILE",
                    help="trusted public key (repeatable; default: the configuration's "
                    "allowlist_pubkeys)")
    vf.add_argument("--min-version", type=int, metavar="N",
                    help="refuse a version not higher than N (what the agent applied)")
    vf.add_argument("--json", action="store_true", help="one JSON document")
    return allow


def _bundle_version(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= 2 ** 63 - 1:
        raise argparse.ArgumentTypeError(f"must be from 1 to 2**63-1: {text!r}")
    return value


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
    handlers = {"add": cmd_add, "remove": cmd_remove, "list": cmd_list, "check": cmd_check,
                "keygen": cmd_keygen, "sign": cmd_sign, "verify": cmd_verify}
    if action not in handlers:
        raise AllowCommandError("choose an action: guard allow add|remove|list|check|keygen|"
                                "sign|verify (see guard allow --help)")
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


# --- signed distribution ----------------------------------------------------------------

def cmd_keygen(args: argparse.Namespace, config: Any, audit: Audit | None = None) -> int:
    from .policy.distribution import generate_keypair, key_id_of, load_public_keys

    private, public = Path(args.private), Path(args.public)
    if private.resolve() == public.resolve():
        raise AllowCommandError("--private and --public must be two different files")
    for path in (private, public):
        if os.path.lexists(path):
            raise AllowCommandError("already exists: refusing to overwrite a key",
                                    str(path))
    private_pem, public_pem = generate_keypair()
    _create_exclusive(private, private_pem, 0o600)
    try:
        _create_exclusive(public, public_pem, 0o644)
    except GuardError:
        private.unlink()
        raise
    key_id = key_id_of(load_public_keys([public_pem.decode("ascii")])[0])
    print(f"key {key_id}: private key {private} (keep it offline), public key {public} "
          "(for the agents' allowlist_pubkeys)")
    return EXIT_OK


def cmd_sign(args: argparse.Namespace, config: Any, audit: Audit | None = None) -> int:
    import sys
    import time

    from .policy.allowlist import MAX_BYTES
    from .policy.distribution import (load_private_key, read_bundle_version,
                                      sign_allowlist, verify_bundle)

    source = Path(args.allowlist_file or config.allowlist)
    key = load_private_key(args.key)
    data = _read_regular(source, MAX_BYTES)
    out = Path(args.out) if args.out else None
    previous = None
    if out is not None and os.path.lexists(out):
        previous = read_bundle_version(_read_regular(out, 64 << 20))
    version = args.bundle_version
    if version is None:
        version = max(int(time.time()), (previous or 0) + 1)
    elif previous is not None and version <= previous:
        raise AllowCommandError(f"--version {version} is not higher than the version in "
                                f"{out} ({previous}): agents would refuse it")
    bundle = sign_allowlist(data, key, version, source=source)
    signed = verify_bundle(bundle, [key.public_key()], min_version=None)   # read back
    summary = (f"signed {source} ({signed.entries} entr{'y' if signed.entries == 1 else 'ies'}"
               f") as version {signed.version} with key {signed.key_id}")
    if out is None:
        sys.stdout.buffer.write(bundle)
        sys.stdout.flush()
        print(summary, file=sys.stderr)
    else:
        _write_replace(out, bundle)
        print(f"{summary}: {out}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, config: Any, audit: Audit | None = None) -> int:
    import sys

    from .policy.distribution import (DEFAULT_MAX_BYTES, fetch_bundle, load_public_keys,
                                      verify_bundle)

    keys = args.pubkey or list(getattr(config, "allowlist_pubkeys", None) or ())
    if not keys:
        raise AllowCommandError("name a trusted public key: --pubkey FILE")
    public_keys = load_public_keys(keys)
    where = args.bundle
    if where.startswith(("http://", "https://")):
        data = fetch_bundle(where, timeout_s=30.0, max_bytes=DEFAULT_MAX_BYTES,
                            ca_file=getattr(config, "allowlist_ca_file", None)).data
    elif where == "-":
        data = sys.stdin.buffer.read(DEFAULT_MAX_BYTES + 1)
        where = "<stdin>"
    else:
        data = _read_regular(Path(where), DEFAULT_MAX_BYTES)
    signed = verify_bundle(data, public_keys, min_version=args.min_version, source=where)
    if args.json:
        print(json.dumps({"bundle": where, "valid": True, "version": signed.version,
                          "key_id": signed.key_id, "signed_at": signed.signed_at,
                          "entries": signed.entries, "sha256": signed.sha256}, indent=2))
    else:
        print(f"{where}: valid: version {signed.version}, key {signed.key_id}, signed at "
              f"{signed.signed_at}, {signed.entries} entr"
              f"{'y' if signed.entries == 1 else 'ies'} (allowlist sha256 {signed.sha256})")
    return EXIT_OK


def _read_regular(path: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file *path* (at most *max_bytes*, else an error)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise AllowCommandError(f"cannot open: {exc.strerror or exc}", str(path)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise AllowCommandError("not a regular file", str(path))
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = os.read(fd, _BLOCK)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise AllowCommandError(f"cannot read: {exc.strerror or exc}", str(path)) from None
    finally:
        os.close(fd)
    if total > max_bytes:
        raise AllowCommandError(f"larger than {max_bytes} bytes", str(path))
    return b"".join(chunks)


def _create_exclusive(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_NOFOLLOW", 0), mode)
    except OSError as exc:
        raise AllowCommandError(f"cannot create: {exc.strerror or exc}", str(path)) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            if hasattr(os, "fchmod"):
                os.fchmod(fh.fileno(), mode)      # whatever the umask
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.unlink()
        raise AllowCommandError(f"cannot write: {exc.strerror or exc}", str(path)) from None


def _write_replace(path: Path, data: bytes) -> None:
    """Write *data* beside *path* and rename it over (mode 0644): a web server serving
    *path* never sends half a bundle."""
    from .fsutil import write_atomic
    try:
        write_atomic(path, data, mode=0o644)
    except OSError as exc:
        raise AllowCommandError(f"cannot write: {exc.strerror or exc}", str(path)) from None

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
    head = bytearray()

    def keep_head(chunk: bytes) -> None:
        if len(head) < keep:
            head.extend(chunk[:keep - len(head)])

    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise AllowCommandError("not a regular file", path)
        digest, _ = sha256_fd(fd, on_chunk=keep_head)
    except OSError as exc:
        raise AllowCommandError(f"cannot read: {exc.strerror or exc}", path) from None
    finally:
        os.close(fd)
    return digest, bytes(head)


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
        from .audit.writer import open_for
        with open_for(config) as log:
            log.write(record)
    return write


__all__ = ["AllowCommandError", "Allowlist", "AllowlistError", "add_parser", "cmd_add",
           "cmd_check", "cmd_keygen", "cmd_list", "cmd_remove", "cmd_sign", "cmd_verify",
           "dispatch"]
