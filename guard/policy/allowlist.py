"""The allowlist admins own: which launches from watched folders may run.

A TOML file edited by hand (kept in Git, reviewed like code), or by ``guard allow``::

    # comments are kept
    [[allow]]
    sha256 = "e3b0c442..."          # exactly one of sha256 / path / signer
    reason = "Finance macro tool, ticket SEC-123"
    added_by = "alice"
    expires = 2027-01-31            # optional TOML date or datetime

- ``sha256``: the file's hash, 64 hex digits, any case.
- ``path``: a glob on the whole absolute path with ``fnmatch`` semantics: ``*`` and
  ``?`` also match ``/`` (``/opt/*.sh`` matches ``/opt/a/b.sh``); ``[...]`` is a set.
- ``signer``: a verified Authenticode publisher (PE) or an Apple Team ID (Mach-O),
  exact and case-sensitive. Which signer names count (verified only, or also the
  unverified Team ID) is the caller's choice; see ``identify.signer``.
- ``expires = D``: the entry stops matching ON day D (it last matches on D-1). A
  datetime counts by its UTC date. Days are the caller's ``today``.

Loading refuses, with one line each, a file that anyone but its owner could have
written: a symlink, not a regular file, group/world-writable, owned by someone other
than root or the user running guard, or larger than 4 MiB. A missing file is an empty
allowlist (``missing=True``): nothing is allowlisted, the strictest state.

``AllowlistStore`` keeps the last good list: a bad edit never weakens or empties
enforcement. ``add_entry``/``remove_entries`` edit the file keeping every byte outside
the edited entry, validate the result by parsing it, and replace the file atomically.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fnmatch
import hashlib
import os
import re
import stat
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import ConfigError, GuardError

MAX_BYTES = 4 * 1024 * 1024
_RACY_NS = 2_000_000_000     # a file changed this recently is read again at the next reload
KINDS = ("sha256", "path", "signer")
NEW_FILE_MODE = 0o640
NEW_DIR_MODE = 0o750
_ENTRY_KEYS = ("sha256", "path", "signer", "reason", "added_by", "expires")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_WINDOWS_ABS = re.compile(r"(?:[A-Za-z]:[\\/]|\\\\)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TOML_LINE = re.compile(r"at line (\d+), column (\d+)")
_NEW_FILE_HEADER = ("# guard allowlist: which programs in watched folders may run.\n"
                    "# One [[allow]] table per entry; edit by hand or with `guard allow`.\n")


class AllowlistError(ConfigError):
    """An allowlist file that is unsafe or malformed (path, and line when known)."""


class AllowlistEditError(GuardError):
    """An edit refused while the file itself is fine: a bad value, a duplicate, no
    such entry, or the file changed under the edit. Nothing was written."""


@dataclass(frozen=True)
class Entry:
    """One ``[[allow]]`` table. ``line`` is the line of its header, ``index`` its
    0-based position among the entries."""

    kind: str                # "sha256" | "path" | "signer"
    value: str               # sha256 in lower case; path glob and signer as written
    reason: str
    added_by: str
    expires: _dt.date | None
    line: int
    index: int

    def expired(self, today: _dt.date) -> bool:
        return self.expires is not None and today >= self.expires

    def describe(self) -> str:
        """'entry 3 (line 12)': how people and the audit log name it."""
        return f"entry {self.index + 1} (line {self.line})"

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "line": self.line, "kind": self.kind,
                "value": self.value, "reason": self.reason, "added_by": self.added_by,
                "expires": self.expires.isoformat() if self.expires else None}


@dataclass(frozen=True)
class Allowlist:
    """An immutable, validated allowlist. Thread-safe to share."""

    entries: tuple[Entry, ...] = ()
    source: Path = Path("<none>")
    fingerprint: str = ""    # sha256 of the file bytes; "" when there is no file
    missing: bool = False    # the file does not exist: nothing is allowlisted
    key: tuple[int, ...] | None = field(default=None, compare=False, repr=False)
    _by_hash: dict[str, tuple[Entry, ...]] = field(default_factory=dict, init=False,
                                                   compare=False, repr=False)
    _by_signer: dict[str, tuple[Entry, ...]] = field(default_factory=dict, init=False,
                                                     compare=False, repr=False)
    _globs: tuple[tuple[Entry, re.Pattern[str]], ...] = field(default=(), init=False,
                                                               compare=False, repr=False)

    def __post_init__(self) -> None:
        by_hash: dict[str, list[Entry]] = {}
        by_signer: dict[str, list[Entry]] = {}
        globs: list[tuple[Entry, re.Pattern[str]]] = []
        for e in self.entries:
            if e.kind == "sha256":
                by_hash.setdefault(e.value, []).append(e)
            elif e.kind == "signer":
                by_signer.setdefault(e.value, []).append(e)
            else:
                globs.append((e, _compile_glob(e.value)))
        object.__setattr__(self, "_by_hash", {k: tuple(v) for k, v in by_hash.items()})
        object.__setattr__(self, "_by_signer", {k: tuple(v) for k, v in by_signer.items()})
        object.__setattr__(self, "_globs", tuple(globs))

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def has_signers(self) -> bool:
        """True when some entry names a signer (callers skip signature checks otherwise)."""
        return bool(self._by_signer)

    def match(self, sha256: str, path: str, signers: Sequence[str],
              today: _dt.date) -> Entry | None:
        """The first entry (in file order) that allows this file, or None.

        Expired entries never match. *sha256* compares case-insensitively; a path glob
        must match the whole absolute *path*; a signer matches one of *signers*
        exactly. Pure: no I/O, no clock.
        """
        candidates: list[Entry] = list(self._by_hash.get(sha256.lower(), ()))
        for name in signers:
            candidates.extend(self._by_signer.get(name, ()))
        candidates.extend(e for e, rx in self._globs if rx.fullmatch(os.path.normcase(path)))
        live = [e for e in candidates if not e.expired(today)]
        return min(live, key=lambda e: e.index) if live else None

    def explain(self, sha256: str, path: str, signers: Sequence[str], today: _dt.date,
                unverified: Sequence[str] = ()) -> str:
        """For ``guard allow check``: which entry allows the file, or why none does,
        with near misses (an expired entry that would match, a glob or signer that
        differs only in case, a signer the file claims without a verified signature).
        *unverified*: signer names the file claims that did not verify."""
        entry = self.match(sha256, path, signers, today)
        if entry is not None:
            return f"allowed by {self.source}: {entry.describe()}: {_summary(entry)}"
        facts = f"sha256 {sha256.lower()}, path {path}"
        facts += f", signed by {', '.join(signers)}" if signers else ", no verified signer"
        lines = [f"not allowed: no entry in {self.source} matches ({facts})"]
        if self.missing:
            lines.append("  the allowlist file does not exist: nothing is allowlisted")
        elif not self.entries:
            lines.append("  the allowlist has no entries")
        lines.extend(f"  near miss: {m}" for m in self._near_misses(sha256, path, signers,
                                                                   today, unverified))
        return "\n".join(lines)

    def _near_misses(self, sha256: str, path: str, signers: Sequence[str],
                     today: _dt.date, unverified: Sequence[str]) -> Iterator[str]:
        folded = {s.casefold() for s in signers}
        for e in self.entries:
            where = e.describe()
            if e.kind == "sha256" and e.value == sha256.lower():
                yield f"{where} has this hash but expired on {e.expires}"
            elif e.kind == "path":
                if _compile_glob(e.value).fullmatch(os.path.normcase(path)):
                    yield f"{where} path {e.value!r} matches but expired on {e.expires}"
                elif _compile_glob(e.value, ignore_case=True).fullmatch(path):
                    yield f"{where} path {e.value!r} matches only if case is ignored"
            elif e.kind == "signer":
                if e.value in signers:
                    yield f"{where} signer {e.value!r} matches but expired on {e.expires}"
                elif e.value in unverified:
                    yield (f"{where} signer {e.value!r}: the file names this signer, but the "
                           "signature is not verified")
                elif e.value.casefold() in folded:
                    yield f"{where} signer {e.value!r} matches only if case is ignored"


def _summary(e: Entry) -> str:
    text = f"{e.kind} {e.value!r}: {e.reason} (added by {e.added_by}"
    if e.expires:
        text += f", expires {e.expires.isoformat()}"
    return text + ")"


def _compile_glob(pattern: str, ignore_case: bool = False) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(os.path.normcase(pattern)),
                      re.IGNORECASE if ignore_case else 0)


# --- reading ----------------------------------------------------------------------------

def load_allowlist(path: Path) -> Allowlist:
    """The allowlist in *path*; an empty one with ``missing=True`` if there is no file.

    Raises AllowlistError (file, and line when known) for an unsafe or malformed file.
    """
    path = Path(path)
    got = _read_secure(path)
    if got is None:
        return Allowlist((), path, "", True, None)
    data, st = got
    return parse_allowlist(data, path, _key(st))


def parse_allowlist(data: bytes, source: Path | str = "<string>",
                    key: tuple[int, ...] | None = None) -> Allowlist:
    """Validate allowlist bytes. Raises AllowlistError with the line of the cause."""
    src = str(source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise AllowlistError("not valid UTF-8 text", src, line) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _toml_error(exc, text, src) from None
    except RecursionError:
        # tomllib recurses once per nested array or inline table: 100k '[' would end
        # whichever thread reloads the list (the daemon's housekeeper).
        raise AllowlistError("invalid TOML: arrays or inline tables nested too deeply",
                             src, _deepest_line(text)) from None
    layout = _Layout(text)
    entries = _build_entries(raw, layout, src)
    return Allowlist(tuple(entries), Path(source), hashlib.sha256(data).hexdigest(), False, key)


def _deepest_line(text: str) -> int:
    """The line where brackets and braces nest deepest (strings and comments not
    told apart: this only points at the spot to look at)."""
    depth = best = 0
    best_line = line = 1
    for ch in text:
        if ch in "[{":
            depth += 1
            if depth > best:
                best, best_line = depth, line
        elif ch in "]}":
            depth = max(0, depth - 1)
        elif ch == "\n":
            line += 1
    return best_line


def _toml_error(exc: tomllib.TOMLDecodeError, text: str, src: str) -> AllowlistError:
    message = str(exc)
    m = _TOML_LINE.search(message)
    line = int(m.group(1)) if m else None
    if "at end of document" in message:
        line = max(1, len(text.rstrip("\n").splitlines()))
    message = re.sub(r"\s*\((?:at line \d+, column \d+|at end of document)\)", "",
                     message).strip() or "invalid TOML"
    return AllowlistError(f"invalid TOML: {message}", src, line)


def _read_secure(path: Path) -> tuple[bytes, os.stat_result] | None:
    """The bytes of *path* and its stat, or None when it does not exist. Opens without
    following a final symlink and without blocking (a FIFO cannot hang the reader)."""
    src = str(path)
    flags = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
             | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK) or _is_symlink(path):
            raise AllowlistError("refusing a symbolic link: point the configuration at the "
                                 "real file", src) from None
        if exc.errno == errno.ENXIO:
            raise AllowlistError("not a regular file", src) from None
        raise AllowlistError(f"cannot open: {exc.strerror or exc}", src) from None
    try:
        st = os.fstat(fd)
        _check_safe(st, src)
        chunks: list[bytes] = []
        total = 0
        while total <= MAX_BYTES:
            chunk = os.read(fd, min(1 << 20, MAX_BYTES + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > MAX_BYTES:
            raise AllowlistError("larger than 4 MiB: refusing to load it", src)
        return b"".join(chunks), st
    except OSError as exc:
        raise AllowlistError(f"cannot read: {exc.strerror or exc}", src) from None
    finally:
        os.close(fd)


def _is_symlink(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def _check_safe(st: os.stat_result, src: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise AllowlistError("not a regular file", src)
    if hasattr(os, "geteuid"):
        if st.st_uid not in (0, os.geteuid()):
            raise AllowlistError(f"owned by {_user(st.st_uid)}, not by root or the user "
                                 "running guard: `chown root` it", src)
        if st.st_mode & 0o022:
            raise AllowlistError(f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}"
                                 "): `chmod go-w` it", src)
    if st.st_size > MAX_BYTES:
        raise AllowlistError("larger than 4 MiB: refusing to load it", src)


def _user(uid: int) -> str:
    try:
        import pwd
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _key(st: os.stat_result) -> tuple[int, ...]:
    # ctime too: an in-place rewrite of the same size with its mtime set back (touch -r,
    # rsync -t, tar) changes nothing else, and no user can set ctime.
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode,
            st.st_uid)


def _stat_key(path: Path) -> tuple[int, ...] | None:
    """What reload compares: None when missing; an error marker when unreadable."""
    try:
        return _key(os.lstat(path))
    except FileNotFoundError:
        return None
    except OSError as exc:
        return (-1, exc.errno or 0)


# --- layout: where each entry and key sits --------------------------------------------

_TOKEN = re.compile(r'''
    (?P<mlb>"""(?:[^"\\]|\\[\s\S]|"(?!""))*"""(?:"{1,2}(?!"))?)
  | (?P<mll>\'\'\'[\s\S]*?\'\'\'(?:\'{1,2}(?!\'))?)
  | (?P<b>"(?:[^"\\\n]|\\.)*")
  | (?P<l>'[^'\n]*')
  | (?P<c>\#[^\n]*)
  | (?P<nl>\n)
  | (?P<open>[\[{])
  | (?P<close>[\]}])
  | (?P<other>[^"'\#\n\[\]{}]+)
''', re.VERBOSE)
_HEADER = re.compile(r"\s*(\[\[?)\s*(.*?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"""\s*("[^"]*"|'[^']*'|[A-Za-z0-9_-]+)\s*[.=]""")


class _Layout:
    """Per line of a valid TOML text: 'blank', 'comment', 'header', 'key' (a key/value
    starts here) or 'cont' (inside a multi-line string or array). Headers carry their
    table name; key lines their first key part."""

    def __init__(self, text: str):
        self.lines = text.split("\n")
        n = len(self.lines)
        self.kinds = ["blank"] * n
        self.names = [""] * n
        self.array = [False] * n
        line, depth, first = 0, 0, True
        for m in _TOKEN.finditer(text):
            group, tok = m.lastgroup, m.group()
            if group == "nl":
                line, first = line + 1, True
                continue
            if group == "other" and not tok.strip():
                continue
            if first:
                first = False
                if depth > 0:
                    self.kinds[line] = "cont"
                elif group == "c":
                    self.kinds[line] = "comment"
                elif group == "open" and tok == "[":
                    self.kinds[line] = "header"
                    self._header(line)
                else:
                    self.kinds[line] = "key"
                    km = _KEY.match(self.lines[line])
                    self.names[line] = _unquote(km.group(1)) if km else ""
            if group == "open":
                depth += 1
            elif group == "close":
                depth = max(0, depth - 1)
            elif group in ("mlb", "mll"):
                for _ in range(tok.count("\n")):
                    line += 1
                    if line < n:
                        self.kinds[line] = "cont"

    def _header(self, line: int) -> None:
        m = _HEADER.match(self.lines[line])
        if m:
            self.array[line] = m.group(1) == "[["
            self.names[line] = ".".join(_unquote(p.strip()) for p in _split_dotted(m.group(2)))

    def headers(self) -> list[int]:
        """0-based line numbers of every table header."""
        return [i for i, k in enumerate(self.kinds) if k == "header"]

    def allow_headers(self) -> list[int]:
        return [i for i in self.headers() if self.array[i] and self.names[i] == "allow"]

    def find_key(self, key: str, start: int, end: int) -> int | None:
        """0-based line of `key = ...` (or a [allow.key] header) in lines [start, end)."""
        for i in range(start, min(end, len(self.lines))):
            if self.kinds[i] == "key" and self.names[i] == key:
                return i
            if self.kinds[i] == "header" and self.names[i].split(".")[:2] == ["allow", key]:
                return i
        return None

    def entry_end(self, header: int) -> int:
        """0-based line just past the entry whose header is at *header*: its last
        key/continuation line + 1 (comments and blank lines after it are not its)."""
        end = header + 1
        for i in range(header + 1, len(self.lines)):
            kind = self.kinds[i]
            if kind == "header":
                break
            if kind in ("key", "cont"):
                end = i + 1
        return end


def _split_dotted(name: str) -> list[str]:
    return re.findall(r'"[^"]*"|\'[^\']*\'|[^.]+', name)


def _unquote(s: str) -> str:
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        return s[1:-1]
    return s


def _build_entries(raw: dict[str, Any], layout: _Layout, src: str) -> list[Entry]:
    headers = layout.allow_headers()
    all_headers = layout.headers()
    first_table = all_headers[0] if all_headers else len(layout.lines)

    def line_of(key: str, start: int, end: int, fallback: int | None) -> int | None:
        found = layout.find_key(key, start, end)
        return found + 1 if found is not None else fallback

    for key in raw:
        if key != "allow":
            raise AllowlistError(f"unknown key {key!r}: the file holds only [[allow]] tables",
                                 src, line_of(key, 0, first_table, None)
                                 or _header_line(layout, key))
    allow = raw.get("allow", [])
    if not isinstance(allow, list) or not all(isinstance(t, dict) for t in allow) \
            or len(allow) != len(headers):
        where = line_of("allow", 0, first_table, None) or _header_line(layout, "allow")
        raise AllowlistError("write each entry as its own [[allow]] table", src, where)

    entries: list[Entry] = []
    for index, (table, header) in enumerate(zip(allow, headers)):
        end = headers[index + 1] if index + 1 < len(headers) else len(layout.lines)
        hline = header + 1

        def fail(message: str, key: str | None = None) -> AllowlistError:
            line = line_of(key, header + 1, end, hline) if key else hline
            return AllowlistError(message, src, line)

        for key in table:
            if key not in _ENTRY_KEYS:
                raise fail(f"unknown key {key!r} in [[allow]] (expected one of sha256, path "
                           "or signer, and reason, added_by, expires)", key)
        kinds = [k for k in KINDS if k in table]
        if not kinds:
            raise fail("this [[allow]] entry needs one of sha256, path or signer")
        if len(kinds) > 1:
            raise fail(f"this [[allow]] entry has both {kinds[0]} and {kinds[1]}: use one "
                       "per entry", kinds[1])
        kind = kinds[0]
        try:
            value = check_value(kind, table[kind])
            reason = _check_text("reason", table.get("reason"))
            added_by = _check_text("added_by", table.get("added_by"))
        except ValueError as exc:
            bad = kind if str(exc).startswith(kind) else str(exc).split(" ", 1)[0]
            raise fail(str(exc), bad) from None
        try:
            expires = _check_expires(table.get("expires"))
        except ValueError as exc:
            raise fail(str(exc), "expires") from None
        entries.append(Entry(kind, value, reason, added_by, expires, hline, index))
    return entries


def _header_line(layout: _Layout, name: str) -> int | None:
    for i in layout.headers():
        if layout.names[i].split(".")[0] == name:
            return i + 1
    return None


def check_value(kind: str, value: Any) -> str:
    """The normalised value of an entry of *kind*; ValueError (starting with the kind)
    when it is not acceptable."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if not isinstance(value, str):
        raise ValueError(f"{kind} must be a string")
    if kind == "sha256":
        if not _SHA256.fullmatch(value):
            raise ValueError("sha256 must be 64 hexadecimal characters")
        return value.lower()
    if kind == "path":
        if "\x00" in value:
            raise ValueError("path must not contain a NUL character")
        if not (value.startswith("/") or _WINDOWS_ABS.match(value)):
            raise ValueError(f"path must be absolute (a glob on the whole path, like "
                             f"/home/*/Downloads/tool.deb), not {value!r}")
        return value
    if not value.strip() or _CONTROL.search(value):
        raise ValueError("signer must be a non-empty name without control characters")
    return value


def _check_text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key} must be a non-empty string"
                         + (" (why this is allowed, e.g. a ticket)" if key == "reason"
                            else " (who added the entry)"))
    return value


def _check_expires(value: Any) -> _dt.date | None:
    if value is None:
        return None
    if isinstance(value, _dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(_dt.timezone.utc)
        return value.date()
    if isinstance(value, _dt.date):
        return value
    raise ValueError("expires must be a TOML date like 2027-01-31 (no quotes)")


# --- the store the daemon holds ---------------------------------------------------------

class AllowlistStore:
    """Holds the allowlist in force; ``reload()`` swaps in a new one only when it loads.

    Before the first good load the store holds an empty list, which allows nothing
    extra (the strictest state, not allow-all). Thread-safe: ``current`` is one
    reference read; ``reload`` is serialised.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._current = Allowlist((), self.path)
        self._stat: Any = object()          # never equal to a real key: first reload loads
        self._error: AllowlistError | None = None

    @property
    def current(self) -> Allowlist:
        return self._current

    @property
    def error(self) -> AllowlistError | None:
        """Why the file on disk is not the one in force (None when it is)."""
        return self._error

    def reload(self) -> tuple[bool, AllowlistError | None]:
        """Re-read the file if its (mtime_ns, ctime_ns, size, inode, mode, owner) changed.

        Returns (changed, error): *changed* when the list in force is now different;
        *error* when the file changed but could not be used (the last good list stays).
        """
        with self._lock:
            key = _stat_key(self.path)
            if key == self._stat:
                return False, None
            recheck = not isinstance(self._stat, tuple)   # a re-read of a racy file
            try:
                new = load_allowlist(self.path)
            except AllowlistError as exc:
                same = recheck and self._error is not None and str(exc) == str(self._error)
                self._stat = _trusted(key)
                if same:
                    return False, None          # the refusal was already reported
                self._error = exc
                return False, exc
            old = self._current
            self._stat = _trusted(new.key if new.key is not None else key)
            self._error = None
            changed = (new.fingerprint, new.missing) != (old.fingerprint, old.missing)
            if changed or old.key is None:
                self._current = new     # same bytes: the list in force stays the same object
            return changed, None


def _trusted(key: Any) -> Any:
    """*key*, or a marker that matches nothing while the file changed too recently for
    its times to tell the next change apart: file times tick in steps of a few
    milliseconds (seconds on some filesystems), so a same-size rewrite right after this
    read could leave every field equal. The next reload then reads the file again."""
    if isinstance(key, tuple) and len(key) > 4 and \
            time.time_ns() - max(key[3], key[4]) < _RACY_NS:
        return object()
    return key


# --- editing ----------------------------------------------------------------------------

def add_entry(path: Path, kind: str, value: str, reason: str, added_by: str,
              expires: _dt.date | None = None) -> Entry:
    """Append an entry to the allowlist at *path* (created, mode 0640, if missing).

    Every byte already in the file stays as it is. Raises AllowlistError when the file
    does not load (fix it first), AllowlistEditError for a bad value or a second entry
    of the same kind and value. Returns the new entry as loaded back.
    """
    import tomlkit

    path = Path(path)
    src = str(path)
    try:
        value = check_value(kind, value)
        reason = _check_text("reason", reason)
        added_by = _check_text("added_by", added_by)
        expires = _check_expires(expires)
    except ValueError as exc:
        raise AllowlistEditError(str(exc), src) from None
    with _edit_lock(path):
        got = _read_secure(path)
        data, st = got if got is not None else (b"", None)
        old = _load_for_edit(data, path)
        for e in old.entries:
            if e.kind == kind and e.value == value:
                raise AllowlistEditError(f"{kind} {value!r} is already allowlisted by "
                                         f"{e.describe()}", src, e.line)
        table = tomlkit.table()
        table.add(kind, value)
        table.add("reason", reason)
        table.add("added_by", added_by)
        if expires is not None:
            table.add("expires", expires)
        aot = tomlkit.aot()
        aot.append(table)
        doc = tomlkit.document()
        doc.append("allow", aot)
        block = tomlkit.dumps(doc)
        text = data.decode("utf-8")
        newline = "\r\n" if "\r\n" in text else "\n"
        if not text:
            text = _NEW_FILE_HEADER.replace("\n", newline)
        if not text.endswith("\n"):
            text += newline
        if text.strip() and not text.endswith(newline * 2):
            text += newline                    # one blank line before the new entry
        new_data = (text + block.replace("\n", newline)).encode("utf-8")
        new = _validate_edit(new_data, path, old.entries, len(old.entries) + 1)
        added = new.entries[-1]
        if (added.kind, added.value, added.reason, added.added_by, added.expires) != \
                (kind, value, reason, added_by, expires):
            raise AllowlistEditError("internal error: the new entry did not read back as "
                                     "written; the file was not changed", src)
        _replace(path, new_data, st)
        return added


def remove_entries(path: Path, kind: str, value: str) -> int:
    """Remove every entry of *kind* and *value*; returns how many.

    What goes: the entry's lines (header to last key), the comment lines directly above
    its header (no blank line between; never the file's opening comment block), and one
    blank line that separated it from the next. Every other byte stays. Raises
    AllowlistError when the file does not load, AllowlistEditError when no entry
    matches."""
    path = Path(path)
    src = str(path)
    try:
        value = check_value(kind, value)
    except ValueError as exc:
        raise AllowlistEditError(str(exc), src) from None
    with _edit_lock(path):
        got = _read_secure(path)
        if got is None:
            raise AllowlistEditError("no allowlist file: nothing to remove", src)
        data, st = got
        old = _load_for_edit(data, path)
        doomed = [e for e in old.entries if e.kind == kind and e.value == value]
        if not doomed:
            raise AllowlistEditError(f"no {kind} entry for {value!r}", src)
        text = data.decode("utf-8")
        layout = _Layout(text)
        lines = text.split("\n")
        drop: set[int] = set()
        for e in doomed:
            start = e.line - 1
            end = layout.entry_end(start)
            top = start
            while top > 0 and layout.kinds[top - 1] == "comment":
                top -= 1
            if top > 0:
                start = top          # its own comment block, directly above the header
            drop.update(range(start, end))
            before_blank = start == 0 or not lines[start - 1].strip()
            if before_blank and end < len(lines) and not lines[end].strip() \
                    and end != len(lines) - 1:
                drop.add(end)                      # the blank line that separated it
            elif end >= len(lines) - 1 and start > 0 and not lines[start - 1].strip():
                drop.add(start - 1)                # last entry: no dangling blank line
        kept = [ln for i, ln in enumerate(lines) if i not in drop]
        new_data = "\n".join(kept).encode("utf-8")
        keep = [e for e in old.entries if e not in doomed]
        _validate_edit(new_data, path, keep, len(keep))
        _replace(path, new_data, st)
        return len(doomed)


def _load_for_edit(data: bytes, path: Path) -> Allowlist:
    try:
        return parse_allowlist(data, path)
    except AllowlistError as exc:
        raise AllowlistError(f"{exc.message}; fix the file before editing it with "
                             "`guard allow`", exc.path, exc.line) from None


def _validate_edit(new_data: bytes, path: Path, kept: Sequence[Entry],
                   total: int) -> Allowlist:
    """The edited bytes must load, hold *total* entries, and start with *kept* unchanged
    (all of them for a removal; all but the appended one for an addition)."""
    try:
        new = parse_allowlist(new_data, path)
    except AllowlistError as exc:
        raise AllowlistEditError(f"internal error: the edited file would not load ({exc}); "
                                 "the file was not changed", str(path)) from None
    same = [(e.kind, e.value, e.reason, e.added_by, e.expires) for e in kept]
    got = [(e.kind, e.value, e.reason, e.added_by, e.expires) for e in new.entries]
    if len(got) != total or got[:len(same)] != same:
        raise AllowlistEditError("internal error: the edit would change other entries; the "
                                 "file was not changed", str(path))
    return new


@contextlib.contextmanager
def _edit_lock(path: Path) -> Iterator[None]:
    """One editor at a time (flock on the folder); creates the folder if missing."""
    folder = path.parent
    if not folder.exists():
        folder.mkdir(mode=NEW_DIR_MODE, parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:      # Windows: no flock; os.replace is still atomic
        yield
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _replace(path: Path, data: bytes, st: os.stat_result | None) -> None:
    """Write *data* over *path* atomically (fsutil.write_atomic), keeping the original's
    mode and owner (0640 for a new file), unless the file changed since *st* was taken."""
    from ..fsutil import write_atomic

    src = str(path)
    if len(data) > MAX_BYTES:
        raise AllowlistEditError("the edited file would be larger than 4 MiB", src)

    def unchanged() -> None:
        if _stat_key(path) != (_key(st) if st is not None else None):
            raise AllowlistEditError("the file changed while it was being edited; nothing "
                                     "was written: run the command again", src)
    write_atomic(path, data, mode=stat.S_IMODE(st.st_mode) if st else NEW_FILE_MODE,
                 uid=st.st_uid if st else None, gid=st.st_gid if st else None,
                 check=unchanged)
