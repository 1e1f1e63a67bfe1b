"""Scan files: read once, gather facts, match rules, judge. The library's entry point.

    >>> import guard
    >>> v = guard.scan_path("Contract.pdf")
    >>> v.level, v.summary

A scan never raises for a bad file: unreadable, vanished, special or malformed files get a
Verdict with ``error`` or a reason saying so; an exception a parser should not have let
out becomes a ``malformed`` reason whose detail starts with ``INTERNAL_ERROR``. Only a bad *argument* (rules that cannot be
read at all) raises a GuardError.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pefile

from .analyze.yara_scan import BUNDLED_RULES, RuleSet, compile_rules, default_cache_dir
from .fsutil import (LEASE_HELD, LEASE_UNAVAILABLE, LEASE_WRITER, lease_broken,
                     release_lease, take_read_lease)
from .hashing import BackgroundSha256, sha256_fd
from .identify.containers import READERS, UNINSPECTED, Limits, walk_container
from .identify.filetype import identify, yara_filetype
from .identify.names import analyze_name, split_extension
from .identify.office import inspect_macros
from .identify.pdf import inspect_pdf
from .identify.pe import inspect_pe
from .identify.sample import MemberHit, Sample
from .identify.shortcut import inspect_shortcut
from .policy.engine import judge
from .verdict import UNKNOWN_TYPE, Failure, Family, FileIdentity, FileType, Skip, Verdict

HEAD_BYTES = 1 << 20       # what a too-large file is identified from
INTERNAL_ERROR = "internal error in the scan"   # starts a malformed reason's detail
_PARALLEL_HASH_BYTES = 1 << 20   # from this size the hash runs beside the inspection
CHANGED_WHILE_SCANNED = "the file changed while it was being scanned"
_CLOSING_WRITER_WAITS_S = (0.001, 0.002, 0.005, 0.01)   # a writer that has just closed


@dataclass(frozen=True)
class ScanOptions:
    max_size_bytes: int = 100 * 1024 * 1024   # above: hash and header only ("too-large")
    yara_timeout_s: float = 10.0
    follow_symlinks: bool = False
    limits: Limits = field(default_factory=Limits)
    # Above this a file is not hashed at all, only its ends are read ("limit-exceeded"):
    # hashing runs at 0.3-2 GB/s, so a 1 TB sparse file (one `truncate`) would hold a scan
    # for minutes to an hour.
    max_hash_bytes: int = 4 << 30


def _owner(uid: int, _cache: dict[int, str] = {}) -> str:  # noqa: B006 - deliberate cache
    if uid not in _cache:
        try:
            _cache[uid] = pwd.getpwuid(uid).pw_name
        except KeyError:
            _cache[uid] = str(uid)
    return _cache[uid]


def _is_runnable(ftype: FileType | None, name: str) -> bool:
    content = ftype is not None and ftype.family.runs and not ftype.guessed
    return content or analyze_name(name).claimed.runs


class Scanner:
    """Holds compiled rules and options; scan_file() is safe to call from one thread.

    Build one per process (rules compile once; libmagic handles are per thread).
    """

    def __init__(self, rules: RuleSet | None = None, options: ScanOptions | None = None):
        self.rules = rules
        self.options = options or ScanOptions()

    # --- one file ---------------------------------------------------------------------
    def scan_file(self, path: str | os.PathLike[str], follow: bool = True) -> Verdict:
        """Scan one file. *follow* False refuses to open a symlink (O_NOFOLLOW)."""
        spath = os.fsdecode(path)
        sample = Sample(path=spath, name=analyze_name(os.path.basename(spath.rstrip("/"))))
        started = time.monotonic()
        try:
            self._gather(sample, spath, follow)
        except OSError as exc:
            sample.error, sample.failure = _oserror_text(exc), Failure.UNREADABLE
        except MemoryError:
            sample.limits_exceeded.append("out of memory while reading")
        except Exception as exc:  # noqa: BLE001 - a parser's bug must not cost the verdict
            # The facts gathered so far are still judged (a program under a document name
            # stays malicious); the file is never called clean. Tests and fuzzers treat
            # this reason as a bug to fix.
            sample.malformed.append(f"{INTERNAL_ERROR}: {type(exc).__name__}: {exc}"[:300])
        return self._verdict(sample, time.monotonic() - started)

    def _gather(self, s: Sample, path: str, follow: bool) -> None:
        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        if not follow:
            flags |= getattr(os, "O_NOFOLLOW", 0)
        try:
            st = os.stat(path, follow_symlinks=follow)
        except OSError as exc:
            s.error, s.failure = _oserror_text(exc), Failure.UNREADABLE
            return
        if not stat.S_ISREG(st.st_mode):
            s.skipped, s.skip = _special_kind(st.st_mode), Skip.SPECIAL
            return
        fd = os.open(path, flags)
        lease = LEASE_UNAVAILABLE
        try:
            # The lease first, then the stat: what is read is what the stat describes.
            lease = take_read_lease(fd)
            for wait_s in _CLOSING_WRITER_WAITS_S:
                if lease != LEASE_WRITER:
                    break
                # The kernel sends IN_CLOSE_WRITE before it drops the closing writer's
                # write access (__fput: fsnotify_close, then put_file_access): a scan woken
                # by the close can find the file still open for writing for a moment.
                time.sleep(wait_s)
                lease = take_read_lease(fd)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):       # swapped between stat and open
                s.skipped, s.skip = _special_kind(st.st_mode), Skip.SPECIAL
                return
            s.size = st.st_size
            if lease == LEASE_WRITER:
                # open for writing (or mapped writable) elsewhere: a rewrite may be half
                # done, and no read can tell. Not read at all.
                s.error, s.failure = CHANGED_WHILE_SCANNED, Failure.CHANGED
                return
            unhashed = st.st_size > self.options.max_hash_bytes
            s.too_large = st.st_size > self.options.max_size_bytes or unhashed
            if unhashed:
                (data, tail), digest, nread = _read_ends(fd, st.st_size), "", st.st_size
                s.limits_exceeded.append(
                    f"size: {st.st_size} bytes is over the {self.options.max_hash_bytes} byte "
                    f"limit for fingerprinting; not hashed, only its first and last bytes read")
            elif s.too_large:
                data, tail, digest, nread = self._read_streaming(
                    fd, (lambda: lease_broken(fd)) if lease == LEASE_HELD else None)
            else:
                data = _read_whole(fd, st.st_size)
                tail, digest, nread = data[-512:], None, len(data)
            after = os.fstat(fd)
            disturbed = lease == LEASE_HELD and lease_broken(fd)
        finally:
            if lease == LEASE_HELD:
                release_lease(fd)             # a writer waiting on the break goes on now
            os.close(fd)
        s.identity, s.owner_uid = FileIdentity.of(st), st.st_uid
        if disturbed or nread != st.st_size or not s.identity.unchanged(after):
            # No verdict for content that changed under the read: it may not be what runs.
            # Without a lease only the stat comparison is left, and it cannot see a read
            # that fell between two writes of one rewrite.
            s.error, s.failure, s.identity = CHANGED_WHILE_SCANNED, Failure.CHANGED, None
            return
        if digest is not None:
            s.sha256 = digest
            self._inspect(s, data, tail, st)
            return
        # Large content: hash on another core while it is inspected (hashlib and YARA
        # both release the GIL), so the two costs overlap instead of adding up.
        hasher = BackgroundSha256(data) if len(data) >= _PARALLEL_HASH_BYTES else None
        try:
            self._inspect(s, data, tail, st)
        finally:
            s.sha256 = hasher.hexdigest() if hasher else hashlib.sha256(data).hexdigest()

    @staticmethod
    def _read_streaming(fd: int, broken: Callable[[], bool] | None = None
                        ) -> tuple[bytes, bytes, str, int]:
        """A too-large file: (head, tail, sha256, bytes read). The head (HEAD_BYTES) is
        what it is identified from; the hash covers every byte. Stops early once
        *broken* says a writer is waiting (the read is void then, and the writer should
        not wait for the rest of it)."""
        head = bytearray()
        tail = b""

        def keep(chunk: bytes) -> None:
            nonlocal tail
            if len(head) < HEAD_BYTES:
                head.extend(chunk[: HEAD_BYTES - len(head)])
            tail = (tail + chunk[-512:])[-512:]    # not tail + chunk: a 1 MiB copy per read

        digest, nread = sha256_fd(fd, on_chunk=keep, stop=broken)
        return bytes(head), tail, digest, nread

    def _inspect(self, s: Sample, data: bytes, tail: bytes, st: os.stat_result) -> None:
        s.type = ftype = identify(data[: 256 * 1024], s.name.extension, tail)
        whole = not s.too_large
        kind = ftype.kind
        if kind == "pe":
            try:
                s.pe = inspect_pe(data)
            except pefile.PEFormatError as exc:
                s.malformed.append(f"pe: {exc}")
        elif ftype.family is Family.SHORTCUT:
            s.shortcut = inspect_shortcut(data[:65536], kind)
            if s.shortcut.error:
                s.malformed.append(f"{kind}: {s.shortcut.error}")
        if whole and kind in ("ole", "ooxml"):
            limits = self.options.limits
            s.macros = inspect_macros(data, kind, s.name.name, max_parts=limits.max_members,
                                      max_ole_bytes=limits.max_member_bytes)
            if s.macros.over_limit:
                s.limits_exceeded.append(f"macros: {s.macros.over_limit}")
        if whole and kind == "pdf":
            s.pdf = inspect_pdf(data)
            if not s.pdf.complete:
                s.malformed.append("pdf: no startxref/%%EOF at the end (truncated?)")
        if (whole and kind in READERS) or kind in UNINSPECTED:
            s.container = walk_container(data, kind, self.options.limits, _is_runnable)
        if self.rules is not None and len(self.rules):
            self._match_rules(s, data, st)

    def _match_rules(self, s: Sample, data: bytes, st: os.stat_result) -> None:
        ext = f".{s.name.extension}" if s.name.extension else ""
        externals = {
            "filename": s.name.name, "filepath": s.path, "extension": ext,
            "filetype": yara_filetype(s.type) if s.type else "", "owner": _owner(st.st_uid),
            "md5": hashlib.md5(data, usedforsecurity=False).hexdigest()
            if self.rules is not None and self.rules.needs_md5 else "",
        }
        deadline = self.options.yara_timeout_s
        started = time.monotonic()
        try:
            s.rule_hits = self.rules.match(data, externals, deadline)
            for m in (s.container.members if s.container else ()):
                if not m.sample:
                    continue
                left = deadline - (time.monotonic() - started)
                if left <= 0:
                    raise TimeoutError(f"YARA scan exceeded {deadline:g} s")
                mext = split_extension(m.name)[1]
                hits = self.rules.match(m.sample, {
                    "filename": m.name, "filepath": f"{s.path}!{m.path}",
                    "extension": f".{mext}" if mext else "",
                    "filetype": yara_filetype(m.type) if m.type else "",
                    "owner": externals["owner"], "md5": ""}, left)
                s.member_hits.extend(MemberHit(m.path, h) for h in hits)
        except TimeoutError as exc:
            s.limits_exceeded.append(f"yara: {exc}")

    def _verdict(self, s: Sample, elapsed_s: float) -> Verdict:
        level, reasons = judge(s)
        details: dict[str, object] = {}
        if s.pe is not None:
            details["pe"] = s.pe.to_dict()
        if s.shortcut is not None:
            details["shortcut"] = s.shortcut.to_dict()
        if s.container is not None:
            details["container"] = {
                "members": len(s.container.members),
                "expanded_bytes": s.container.expanded_bytes,
                "truncated": s.container.truncated,
                "runnable": [m.path for m in s.container.members if m.sample][:50],
            }
        rules = [h.rule for h in s.rule_hits] + [h.hit.rule for h in s.member_hits]
        return Verdict(
            path=s.path, level=level, reasons=reasons, sha256=s.sha256, size=s.size,
            type=s.type or UNKNOWN_TYPE,
            claimed_family=s.name.claimed, rules=tuple(dict.fromkeys(rules)),
            error=s.error, details=details, skipped=bool(s.skipped),
            identity=s.identity, owner_uid=s.owner_uid, scan_ms=elapsed_s * 1000, failure=s.failure, skip=s.skip,
        )

    # --- trees ------------------------------------------------------------------------
    def iter_targets(self, paths: Iterable[str | os.PathLike[str]]
                     ) -> Iterator[tuple[str, Verdict | None]]:
        """Walk *paths*: (file to scan, None) or (path, ready Verdict) for skipped ones.

        A path named on the command line is followed if it is a link (like find -H);
        links met while walking are followed only when they stay inside the root that
        was named, unless follow_symlinks is set. Folder loops are never walked twice.
        """
        for p in paths:
            p = os.fsdecode(p)
            try:
                st = os.stat(p)
            except OSError as exc:
                yield p, self._error_verdict(p, _oserror_text(exc))
                continue
            if stat.S_ISDIR(st.st_mode):
                root = os.path.realpath(p)
                yield from self._walk(p, root, {(st.st_dev, st.st_ino)})
            else:
                yield p, None

    def _walk(self, folder: str, root: str, seen: set[tuple[int, int]]
              ) -> Iterator[tuple[str, Verdict | None]]:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            yield folder, self._error_verdict(folder, _oserror_text(exc))
            return
        for entry in entries:
            path = entry.path
            try:
                is_link = entry.is_symlink()
                if is_link and not self.options.follow_symlinks:
                    target = os.path.realpath(path)
                    if not (target == root or target.startswith(root.rstrip("/") + "/")):
                        yield path, self._skip_verdict(path, "a link to outside the scanned "
                                                             "folder was not followed", Skip.LINK)
                        continue
                st = entry.stat(follow_symlinks=True)
            except OSError as exc:
                yield path, self._error_verdict(path, _oserror_text(exc))
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                yield from self._walk(path, root, seen | {key})
            elif stat.S_ISREG(st.st_mode):
                yield path, None
            else:
                yield path, self._skip_verdict(
                    path, f"not a regular file ({_special_kind(st.st_mode)})", Skip.SPECIAL)

    def _error_verdict(self, path: str, error: str) -> Verdict:
        s = Sample(path=path, name=analyze_name(os.path.basename(path.rstrip("/")) or path))
        s.error, s.failure = error, Failure.UNREADABLE
        return self._verdict(s, 0.0)

    def _skip_verdict(self, path: str, why: str, kind: Skip) -> Verdict:
        s = Sample(path=path, name=analyze_name(os.path.basename(path)))
        s.skipped, s.skip = why, kind
        return self._verdict(s, 0.0)


def _read_ends(fd: int, size: int) -> tuple[bytes, bytes]:
    """(head, tail) of a file that is not read whole: HEAD_BYTES and the last 512 bytes."""
    return os.pread(fd, HEAD_BYTES, 0), os.pread(fd, 512, max(0, size - 512))


def _read_whole(fd: int, size: int) -> bytes:
    """The whole file in one bytes object, read straight into it (no growing buffer and
    no second copy). Reads past *size* so that a file which grew is noticed."""
    data = os.read(fd, size + 1)
    if 0 < len(data) <= size:             # a short read: go on until EOF or past size
        parts, total = [data], len(data)
        while total <= size and (chunk := os.read(fd, max(size + 1 - total, 1 << 16))):
            parts.append(chunk)
            total += len(chunk)
        data = b"".join(parts)
    return data


def _special_kind(mode: int) -> str:
    for test, word in ((stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISDIR, "folder")):
        if test(mode):
            return word
    return "special file"


def _oserror_text(exc: OSError) -> str:
    return (exc.strerror or type(exc).__name__).lower() if exc.strerror else str(exc)


_default_scanner: Scanner | None = None


def load_rules(extra_dirs: Iterable[str | os.PathLike[str]] = (), bundled: bool = True
               ) -> RuleSet:
    """Bundled rules/ plus *extra_dirs*, compiled (cached). Broken files are in .errors."""
    dirs = ([BUNDLED_RULES] if bundled and BUNDLED_RULES.is_dir() else []) + [
        Path(d) for d in extra_dirs]
    return compile_rules(dirs, cache_dir=default_cache_dir())


def scan_path(path: str | os.PathLike[str], rules: RuleSet | None = None,
              options: ScanOptions | None = None) -> Verdict:
    """Scan one file with the bundled rules (or *rules*). Never raises for a bad file."""
    global _default_scanner
    if rules is not None or options is not None:
        return Scanner(rules if rules is not None else load_rules(), options).scan_file(path)
    if _default_scanner is None:
        _default_scanner = Scanner(load_rules())
    return _default_scanner.scan_file(path)
