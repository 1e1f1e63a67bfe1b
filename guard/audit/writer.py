"""Append-only, hash-chained JSON-lines audit log with crash-safe size rotation.

One record per line, canonical JSON (sorted keys, no spaces, ASCII only), Elastic Common
Schema field names as nested objects. Every record carries a chain under ``guard``:

- ``seq``: 1, 2, 3 ... contiguous across rotations;
- ``prev``: sha256 (hex) of the previous record's line bytes (without the newline), or 64
  zeros for the very first record;
- ``alg``: ``"sha256"``, or ``"hmac-sha256"`` when the log is written with a key;
- ``hash``: sha256 (or HMAC-SHA256 with the key) over ``prev`` + the canonical JSON of the
  record without ``guard.hash``.

Limits:
- Without a key, anyone who can write the file can rewrite it from any point on and
  recompute every later hash; ``verify_log`` then cannot tell. With a key (kept away from
  the log's writers-by-hand, e.g. root-only config), such a rewrite is detected.
- Deleting whole records off the end, or whole oldest files, looks like a shorter log.
  The SIEM's copy is the external anchor for both.
- Several processes may write one log (the daemon, and ``guard`` commands logging a
  restore): each write holds ``flock`` on ``<log>.lock`` and first catches up with
  whatever the others appended or rotated. Threads share one ``AuditLog``. An external
  log rotator (logrotate) must not touch the files: rotation is built in.
- Strings are made valid Unicode (lone surrogates from undecodable file names become
  U+FFFD); callers keep exact bytes in ``*_b64`` fields (``file.path_b64``). ``bytes``
  values are written as base64 text.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import enum
import errno
import fcntl
import hashlib
import hmac
import json
import math
import os
import re
import socket
import threading
from pathlib import Path
from typing import Any, Iterator

from . import AuditError

ECS_VERSION = "8.11.0"
SCHEMA_VERSION = 1          # guard's own record schema; same value as record.SCHEMA_VERSION
ZERO_HASH = "0" * 64
ALG_PLAIN = "sha256"
ALG_HMAC = "hmac-sha256"
DIR_MODE = 0o750
FILE_MODE = 0o640
_MAX_DEPTH = 64             # deeper values (or cycles) are cut, never a RecursionError
_MAX_REPAIR_COPY = 64 * 1024  # torn tails up to this size are kept (base64) in the repair record
_BLOCK = 64 * 1024
_SURROGATE = re.compile("[\ud800-\udfff]")
_NOT_ESCAPABLE = re.compile("[\ud800-\udc7f\udd00-\udfff]")  # surrogates no byte came from


# --- canonical form and chain hash (shared with verify) --------------------------------

def canonical_json(obj: Any) -> str:
    """The one serialisation of a record: sorted keys, no spaces, ASCII, no NaN.

    Raises ValueError/TypeError for values JSON cannot hold (the writer sanitises first).
    """
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":"), sort_keys=True,
                      allow_nan=False)


def chain_digest(prev: str, body: str, key: bytes | None) -> str:
    """``guard.hash``: sha256, or HMAC-SHA256 with ``key``, over prev + canonical body."""
    data = (prev + body).encode("ascii")
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def line_digest(line: bytes) -> str:
    """``guard.prev`` of the next record: sha256 of a line's bytes without its newline."""
    return hashlib.sha256(line).hexdigest()


def rotated_path(path: Path, n: int) -> Path:
    """``audit.jsonl`` -> ``audit.jsonl.<n>``."""
    return path.with_name(f"{path.name}.{n}")


def rotated_numbers(path: Path) -> list[int]:
    """Numbers N of the existing ``<path>.N`` files, ascending (1 is the newest)."""
    try:
        names = os.listdir(path.parent)
    except (FileNotFoundError, NotADirectoryError):
        return []
    prefix = path.name + "."
    nums = [int(n[len(prefix):]) for n in names
            if n.startswith(prefix) and n[len(prefix):].isdigit() and int(n[len(prefix):]) > 0]
    return sorted(nums)


def reverse_lines(path: Path) -> Iterator[bytes]:
    """A file's lines, last first, without newlines; reads from the end in blocks.

    A last line without a newline is yielded like the others.
    """
    with open(path, "rb") as fh:
        end = fh.seek(0, os.SEEK_END)
        if end == 0:
            return
        fh.seek(end - 1)
        if fh.read(1) == b"\n":
            end -= 1
        pos, buf = end, b""
        while pos > 0:
            n = min(_BLOCK, pos)
            pos -= n
            fh.seek(pos)
            buf = fh.read(n) + buf
            parts = buf.split(b"\n")
            buf = parts[0]
            yield from reversed(parts[1:])
        yield buf


def record_seq(line: bytes) -> int | None:
    """``guard.seq`` of a line, or None when the line is not a chained record."""
    try:
        rec = json.loads(line)
        seq = rec["guard"]["seq"]
    except (ValueError, TypeError, KeyError, RecursionError):
        return None
    return seq if type(seq) is int else None


# --- sanitising: any caller value -> JSON that is valid and one line --------------------

def clean_text(s: str) -> str:
    """Valid Unicode for any str: lone surrogates become U+FFFD (escaped bytes decoded)."""
    if not _SURROGATE.search(s):
        return s
    s = _NOT_ESCAPABLE.sub("\ufffd", s)
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-ready deep copy of ``value``; never raises.

    Enums -> value, paths -> text, bytes -> base64 text, sets -> sorted lists, non-finite
    floats -> "nan"/"inf"/"-inf", ints beyond 64 bits -> text, objects with ``to_dict()``
    -> that, anything else -> str().
    """
    if depth > _MAX_DEPTH:
        return "<too deep>"
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, enum.Enum):
        return jsonable(value.value, depth + 1)
    if isinstance(value, int):
        # Past 64 bits no SIEM field holds it (and huge ints make json.dumps raise).
        if value.bit_length() <= 64:
            return int(value)
        return str(value) if value.bit_length() < 10_000 else "<huge int>"
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict):
        return {_key(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((jsonable(v, depth + 1) for v in value), key=repr)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, os.PathLike):
        return clean_text(os.fsdecode(value))
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if callable(getattr(value, "to_dict", None)):
        try:
            return jsonable(value.to_dict(), depth + 1)
        except Exception:  # a broken to_dict must not lose the record
            pass
    try:
        return clean_text(str(value))
    except Exception:
        return f"<{type(value).__name__}>"


def _key(k: Any) -> str:
    if isinstance(k, str):
        return clean_text(k)
    out = jsonable(k, _MAX_DEPTH)
    return out if isinstance(out, str) else canonical_json(out)


def utc_timestamp() -> str:
    """Now as ECS ``@timestamp``: UTC, milliseconds, ``Z``."""
    now = dt.datetime.now(dt.timezone.utc)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- the key -------------------------------------------------------------------------

KEY_BYTES = 32


def load_key(path: Path, create: bool = False) -> bytes | None:
    """The audit log's HMAC key, kept as hex in *path*; None when there is none (and not
    *create*). Made with 32 random bytes on first use (*create*), mode 0600. Refused (an
    AuditError naming the file) when it is a link, not a regular file, open to other
    users, owned by someone else, or not a key: a key others can read or swap signs
    nothing."""
    import secrets
    import stat as st_

    path = Path(path)
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | getattr(os, "O_CLOEXEC", 0), 0o600)
        except FileExistsError:
            return load_key(path, create=False)       # another writer made it first
        except OSError as e:
            raise AuditError(f"cannot create the audit log key: {e.strerror or e}",
                             path=str(path)) from e
        try:
            os.write(fd, (secrets.token_hex(KEY_BYTES) + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        return load_key(path, create=False)
    except OSError as e:
        raise AuditError(f"cannot read the audit log key: {e.strerror or e}",
                         path=str(path)) from e
    try:
        st = os.fstat(fd)
        if not st_.S_ISREG(st.st_mode):
            raise AuditError("the audit log key is not a regular file", path=str(path))
        if hasattr(os, "geteuid") and st.st_uid not in (os.geteuid(), 0):
            raise AuditError(f"the audit log key is owned by uid {st.st_uid}",
                             path=str(path))
        if st.st_mode & 0o077:
            raise AuditError(f"the audit log key is open to other users (mode "
                             f"{st.st_mode & 0o777:04o}; want 0600)", path=str(path))
        text = os.read(fd, 4096).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise AuditError("the audit log key is not a key (want 64 hex digits)", path=str(path))
    return key


def open_for(config: Any) -> "AuditLog":
    """The audit log as *config* (a guard Config) says: file, rotation and key. Every
    writer (the agent, the quarantine and allowlist commands) opens it this way, so they
    all sign with the same key."""
    key_path = config.audit_key_path
    key = load_key(key_path, create=True) if key_path is not None else None
    return AuditLog(Path(config.log_file), max_bytes=int(config.log_max_mb * 1024 * 1024),
                    keep=config.log_keep, key=key)


# --- the writer ------------------------------------------------------------------------

class AuditLog:
    """Appends hash-chained records to ``path``; rotates to ``path.1`` ... ``path.<keep>``.

    Thread-safe. Crash-safe: a torn last line (crash mid-write) is cut off on open and the
    cut is itself logged (``event.action`` "log-repaired"); rotation renames oldest first,
    so after a kill at any step the newest record is still the last line of ``path`` or,
    when ``path`` is missing or empty, of the lowest-numbered rotated file.

    With ``key``, ``guard.hash`` is an HMAC-SHA256: a rewrite by someone without the key
    is detected by ``verify_log(path, key=key)``.

    Raises AuditError when the log cannot be opened (folder not creatable, unwritable).
    ``max_bytes`` < 1 or ``keep`` < 1 is a ValueError (a config bug, caught by config.py).
    """

    def __init__(self, path: Path, max_bytes: int = 50 * 1024 * 1024, keep: int = 10,
                 fsync: bool = True, key: bytes | None = None) -> None:
        if max_bytes < 1 or keep < 1:
            raise ValueError(f"audit log needs max_bytes >= 1 and keep >= 1, "
                             f"got {max_bytes} and {keep}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self.fsync = fsync
        self._key = key
        self._alg = ALG_PLAIN if key is None else ALG_HMAC
        self._hostname = socket.gethostname()
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._size = 0
        self._bad_tail_at: int | None = None  # a failed write left bytes past this offset
        self._seq = 0
        self._prev = ZERO_HASH
        try:
            self._open()
        except OSError as e:
            self._release()
            raise AuditError(f"cannot open audit log: {e.strerror or e}",
                             path=str(self.path)) from e
        except AuditError:
            self._release()
            raise

    # -- public --

    def write(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append one record; returns it as written (sanitised, with defaults and chain).

        Adds ``@timestamp``, ``ecs.version``, ``host.hostname`` and ``schema_version``
        unless present; always sets ``guard.seq/prev/alg/hash``. Blocks for the fsync and
        while another process writes. Raises AuditError (log unchanged, sequence not
        advanced) when the write fails.
        """
        with self._lock:
            if self._fd is None or self._lock_fd is None:
                raise AuditError("audit log is closed", path=str(self.path))
            with _flocked(self._lock_fd):
                try:
                    repaired = self._catch_up()
                except OSError as e:
                    raise AuditError(f"cannot write audit record: {e.strerror or e}",
                                     path=str(self.path)) from e
                if repaired is not None:
                    self._write_locked(repaired)
                return self._write_locked(record)

    @property
    def seq(self) -> int:
        """``guard.seq`` of the last record written (0 for an empty log)."""
        return self._seq

    def close(self) -> None:
        """Flush, sync and close; idempotent. Later writes raise AuditError."""
        with self._lock:
            if self._fd is not None and self.fsync:
                try:
                    os.fsync(self._fd)
                except OSError:
                    pass  # every write was already synced; nothing left to save
            self._release()

    def __enter__(self) -> "AuditLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- opening and resuming --

    def _open(self) -> None:
        _make_dirs(self.path.parent)
        self._lock_fd = _open_lock_file(self.path)
        with _flocked(self._lock_fd):
            self._fd = self._open_current()
            repaired = self._repair_torn_tail()
            self._seq, self._prev = self._resume_point()
            if repaired is not None:
                with self._lock:
                    self._write_locked(repaired)

    def _catch_up(self) -> dict[str, Any] | None:
        """Under the file lock: follow what other processes did since our last write.

        Reopens ``path`` when it was rotated away (or removed), re-reads the last record
        when the file grew, and cuts a torn tail a crashed writer left (returning the
        repair record to write). Costs one stat when nobody else wrote.
        """
        assert self._fd is not None
        if self._bad_tail_at is not None:   # our own failed write: finish undoing it
            os.ftruncate(self._fd, self._bad_tail_at)
            self._bad_tail_at = None
        mine = os.fstat(self._fd)
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            if now.st_size == self._size:
                return None
            self._size = now.st_size
        else:
            os.close(self._fd)
            self._fd = None
            self._fd = self._open_current()
        repaired = self._repair_torn_tail()
        self._seq, self._prev = self._resume_point()
        return repaired

    def _write_locked(self, record: dict[str, Any]) -> dict[str, Any]:
        """Seal, rotate if needed, append; the caller holds both locks."""
        rec, line = self._seal(record)
        if self._size > 0 and self._size + len(line) > self.max_bytes:
            self._rotate()
        self._append(line)
        self._seq += 1
        self._prev = line_digest(line[:-1])
        return rec

    def _open_current(self) -> int:
        """Open (creating with mode 0640) the current file for appending; sync the folder."""
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                     FILE_MODE)
        if created:
            os.fchmod(fd, FILE_MODE)  # the umask must not widen or narrow it
            _sync_dir(self.path.parent)
        self._size = os.fstat(fd).st_size
        return fd

    def _repair_torn_tail(self) -> dict[str, Any] | None:
        """Cut a last line that has no newline; returns the record describing the cut."""
        assert self._fd is not None
        if self._size == 0 or os.pread(self._fd, 1, self._size - 1) == b"\n":
            return None
        keep_to = _last_newline_end(self._fd, self._size)
        torn = os.pread(self._fd, self._size - keep_to, keep_to)
        os.ftruncate(self._fd, keep_to)
        if self.fsync:
            os.fsync(self._fd)
        self._size = keep_to
        repair: dict[str, Any] = {"truncated_bytes": len(torn),
                                  "truncated_sha256": hashlib.sha256(torn).hexdigest()}
        if len(torn) <= _MAX_REPAIR_COPY:
            repair["truncated_b64"] = base64.b64encode(torn).decode("ascii")
        return {
            "event": {"kind": "event", "category": ["file"], "type": ["change"],
                      "action": "log-repaired", "outcome": "success", "module": "guard"},
            "file": {"path": clean_text(str(self.path))},
            "message": f"cut a torn last line ({len(torn)} bytes) left by a crash "
                       f"during a write",
            "guard": {"repair": repair},
        }

    def _resume_point(self) -> tuple[int, str]:
        """(last seq, prev for the next record) from the newest line on disk.

        Walks lines newest first across the current and rotated files until one parses;
        lines after it (garbage) still count towards seq, and ``prev`` always hashes the
        very last line, so the chain links to what is really on disk.
        """
        prev: str | None = None
        skipped = 0
        for line in self._lines_newest_first():
            if prev is None:
                prev = line_digest(line)
            seq = record_seq(line)
            if seq is not None:
                return seq + skipped, prev
            skipped += 1
        return skipped, prev or ZERO_HASH

    def _lines_newest_first(self) -> Iterator[bytes]:
        files = [self.path] + [rotated_path(self.path, n) for n in rotated_numbers(self.path)]
        for f in files:
            try:
                yield from reverse_lines(f)
            except FileNotFoundError:
                continue

    # -- writing --

    def _seal(self, record: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        """Sanitise, add defaults and the chain; returns (record, line with newline)."""
        rec = jsonable(record) if isinstance(record, dict) else {"message": jsonable(record)}
        rec.setdefault("@timestamp", utc_timestamp())
        _set_nested_default(rec, "ecs", "version", ECS_VERSION)
        _set_nested_default(rec, "host", "hostname", clean_text(self._hostname))
        rec.setdefault("schema_version", SCHEMA_VERSION)
        chain = rec.get("guard")
        if not isinstance(chain, dict):
            chain = {} if chain is None else {"value": chain}
            rec["guard"] = chain
        chain.pop("hash", None)
        chain.update(seq=self._seq + 1, prev=self._prev, alg=self._alg)
        chain["hash"] = chain_digest(self._prev, canonical_json(rec), self._key)
        return rec, canonical_json(rec).encode("ascii") + b"\n"

    def _append(self, line: bytes) -> None:
        """Write one whole line or nothing: a partial write is truncated back."""
        assert self._fd is not None
        start = self._size
        try:
            _write_all(self._fd, line)
            if self.fsync:
                os.fsync(self._fd)
        except OSError as e:
            self._truncate_back(start)
            raise AuditError(f"cannot write audit record: {e.strerror or e}",
                             path=str(self.path)) from e
        self._size = start + len(line)

    def _truncate_back(self, size: int) -> None:
        assert self._fd is not None
        try:
            if os.fstat(self._fd).st_size != size:
                os.ftruncate(self._fd, size)
        except OSError:
            self._bad_tail_at = size  # retried by _catch_up before the next write

    # -- rotation --

    def _rotate(self) -> None:
        """``path`` -> ``path.1`` after shifting older files up; then a new empty ``path``.

        Order matters for crash safety: older files move first (the newest data stays in
        ``path`` until one atomic rename moves it to ``.1``), so at every instant the last
        record is the last line of ``path`` or of the lowest-numbered rotated file.
        """
        assert self._fd is not None
        try:
            if self.fsync:
                os.fsync(self._fd)
            self._shift_rotated()
            os.rename(self.path, rotated_path(self.path, 1))
            _sync_dir(self.path.parent)
            os.close(self._fd)
            self._fd = None
            self._fd = self._open_current()
        except OSError as e:
            self._recover_after_failed_rotation()
            raise AuditError(f"cannot rotate audit log: {e.strerror or e}",
                             path=str(self.path)) from e

    def _shift_rotated(self) -> None:
        """Make room for ``.1``: ``.k-1`` -> ``.k`` ... ``.1`` -> ``.2``, oldest first.

        Stops at the first gap (left by a crash mid-shift), so a gap closes instead of
        moving; at ``keep`` the rename replaces (deletes) the oldest file. Files numbered
        above ``keep`` (``keep`` was lowered) are deleted.
        """
        nums = set(rotated_numbers(self.path))
        for n in sorted(x for x in nums if x > self.keep):
            os.unlink(rotated_path(self.path, n))
        top = next((n for n in range(1, self.keep + 1) if n not in nums), self.keep)
        for n in range(top - 1, 0, -1):
            os.rename(rotated_path(self.path, n), rotated_path(self.path, n + 1))
        if top > 1:
            _sync_dir(self.path.parent)

    def _recover_after_failed_rotation(self) -> None:
        """After a failed rotation keep a usable fd on the current file (new or old)."""
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        try:
            self._fd = self._open_current()
        except OSError:
            self._fd = None  # later writes raise "closed"; the caller already got an error

    def _release(self) -> None:
        for name in ("_fd", "_lock_fd"):
            fd = getattr(self, name)
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, None)


# --- small OS helpers ------------------------------------------------------------------

def _make_dirs(folder: Path) -> None:
    """Create missing folders with mode 0750 (exactly, whatever the umask)."""
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            continue  # created concurrently: leave its mode alone
        os.chmod(d, DIR_MODE)


def _open_lock_file(path: Path) -> int:
    """The descriptor of ``<path>.lock``, which every writing process flocks per write."""
    return os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                   FILE_MODE)


@contextlib.contextmanager
def _flocked(fd: int) -> Iterator[None]:
    """Hold an exclusive flock on ``fd`` (blocks while another process writes)."""
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _sync_dir(folder: Path) -> None:
    """fsync a folder so renames and new names survive a power cut."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


def _last_newline_end(fd: int, size: int) -> int:
    """Offset just after the last newline before ``size`` (0 when there is none)."""
    pos = size
    while pos > 0:
        n = min(_BLOCK, pos)
        pos -= n
        i = os.pread(fd, n, pos).rfind(b"\n")
        if i >= 0:
            return pos + i + 1
    return 0


def _set_nested_default(rec: dict[str, Any], outer: str, inner: str, value: Any) -> None:
    obj = rec.setdefault(outer, {})
    if isinstance(obj, dict):
        obj.setdefault(inner, value)
