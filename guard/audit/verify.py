"""Reading the audit log: verify its hash chain, follow it, render records for people.

What ``verify_log`` detects: an edited record (hash or canonical form no longer matches),
a deleted record (seq gap), an inserted or duplicated record (seq repeats or goes back),
a reordered pair, an edited-and-rehashed record (the next record's ``guard.prev`` no
longer links), unparseable lines, and a torn last line.

Limits (see ``writer`` for the chain itself):
- Without a key, a rewrite from some record to the end with every later hash recomputed
  is consistent and NOT detected; with the key (``AuditLog(key=...)``,
  ``verify_log(key=...)``) it is, since nobody without the key can make valid HMACs.
- Records that are HMAC-signed cannot have their hash checked without the key; they are
  counted in ``VerifyResult.hashes_unchecked`` and only their linkage is checked.
- With a key, every record must be HMAC-signed, except a run of plain records at the
  very start (a log begun before signing was turned on): the first signed record's HMAC
  covers the hash of the plain one before it, so an edit of the plain run is still
  detected (at the first signed record, not at the edit), and a log with no signed record
  at all is reported.
- Deleting whole records off the end, or the oldest records of a rotated log (rotation
  drops the oldest file too), is not detectable from the files alone; the SIEM's copy
  is the anchor: pass the newest seq it holds as ``last_seq`` and a log cut short
  before it is reported. A log that was never rotated must start at seq 1.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import re
import threading
import time
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Callable, Generator, Iterable, Iterator

from . import AuditError
from .writer import (ALG_HMAC, ALG_PLAIN, ZERO_HASH, canonical_json, chain_digest,
                     line_digest, record_seq, rotated_numbers, rotated_path)

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_SEQ_HINT = re.compile(rb'"seq":(\d{1,18})[,}]')


@dataclass(frozen=True)
class Problem:
    """One break in the chain. ``seq`` is the first record it casts doubt on."""

    file: str               # file name, e.g. "audit.jsonl.1"
    line: int               # 1-based line in that file
    seq: int | None         # None when no position could be worked out
    message: str            # the cause: "hash does not match its content (edited)"

    def __str__(self) -> str:
        record = f"record {self.seq}: " if self.seq is not None else ""
        return f"{self.file}:{self.line}: {record}{self.message}"


@dataclass
class VerifyResult:
    """Outcome of ``verify_log``. ``first_bad_seq``: every record before it is intact."""

    ok: bool
    records: int
    files: list[str]
    first_bad_seq: int | None
    problems: list[Problem] = field(default_factory=list)
    hashes_unchecked: int = 0   # HMAC records seen without a key: linkage checked only


def log_files(path: Path) -> list[Path]:
    """The log's files oldest first: ``path.N`` ... ``path.1``, ``path`` (existing only)."""
    path = Path(path)
    files = [rotated_path(path, n) for n in reversed(rotated_numbers(path))]
    return files + [path] if path.exists() else files


def verify_log(path: Path, key: bytes | None = None, *,
               last_seq: int | None = None) -> VerifyResult:
    """Check the chain across all of the log's files.

    ``last_seq``: a seq known to have been written, from outside the log (the newest
    record the SIEM received); a log that ends before it was cut short, and the first
    missing record is its first bad one. Reads every file once, line by line. Raises
    AuditError when no file of the log exists or one cannot be read.
    """
    path = Path(path)
    files = log_files(path)
    if not files:
        raise AuditError("no audit log here", path=str(path))
    check = _ChainCheck(key, never_rotated=files == [path], last_seq=last_seq)
    for f in files:
        try:
            with open(f, "rb") as fh:
                for lineno, raw in enumerate(fh, 1):
                    complete = raw.endswith(b"\n")
                    check.feed(f.name, lineno, raw[:-1] if complete else raw, complete)
        except OSError as e:
            raise AuditError(f"cannot read audit log: {e.strerror or e}", path=str(f)) from e
    return check.result([str(f) for f in files])


class _ChainCheck:
    """Feeds lines in log order; keeps the last trusted record to judge the next one."""

    def __init__(self, key: bytes | None, never_rotated: bool,
                 last_seq: int | None = None) -> None:
        self.key = key
        self.never_rotated = never_rotated    # so the first record must be seq 1
        self.last_seq = last_seq              # the log must reach at least this seq
        self.problems: list[Problem] = []
        self.records = 0
        self.unchecked = 0
        self.signed = 0                       # HMAC records whose hash was checked
        self.plain_first: int | None = None   # seq of the first unsigned record let in
        self.first_where: tuple[str, int] | None = None
        self.last_good: int | None = None     # seq of the last trusted record
        self.first_seq: int | None = None     # seq of the first trusted record
        self.bad_run = 0                      # untrusted lines since then
        self.prev_digest: str | None = None   # sha256 of the line before
        self.prev_where: tuple[str, int] = ("", 0)
        self.leading: list[tuple[int, int | None]] = []  # (problem index, seq hint)

    def feed(self, file: str, lineno: int, raw: bytes, complete: bool) -> None:
        if self.first_where is None:
            self.first_where = (file, lineno)
        problems, signed = len(self.problems), self.signed
        rec, why = self._content(raw, complete)
        if rec is not None:
            self.records += 1
        if why is None and rec is not None:
            self._link(file, lineno, rec)
        else:
            self._bad(file, lineno, raw, why or "")
        self.prev_digest = line_digest(raw)
        self.prev_where = (file, lineno)
        if signed == 0 and self.signed and self.plain_first is not None and \
                len(self.problems) > problems:
            # The unsigned run let in before the first signed record does not lead to it:
            # nothing vouches for any of it (forged at the head, or edited).
            self.problems.append(Problem(file, lineno, self.plain_first, "the unsigned "
                                         "records before the first signed one do not lead "
                                         "to it (forged or edited)"))

    def result(self, files: list[str]) -> VerifyResult:
        self._place_unanchored()
        if self.key is not None and self.records and self.signed == 0 and not self.problems:
            file, line = self.first_where or ("-", 1)
            self.problems.append(Problem(file, line, self.first_seq or 1, "no record is "
                                         "signed with the key: the log was rewritten "
                                         "without it, or this is the wrong key"))
        end = (self.last_good or 0) + self.bad_run   # positions the log's lines fill
        if self.last_seq is not None and end < self.last_seq:
            file, line = self.prev_where
            self.problems.append(Problem(file or "-", line + 1, end + 1, f"the log ends at "
                                         f"seq {end} but seq {self.last_seq} was written: "
                                         f"{self.last_seq - end} record(s) missing at the "
                                         f"end (deleted or truncated)"))
        seqs = [p.seq for p in self.problems if p.seq is not None]
        return VerifyResult(ok=not self.problems, records=self.records, files=files,
                            first_bad_seq=min(seqs) if seqs else None,
                            problems=self.problems, hashes_unchecked=self.unchecked)

    # -- one line on its own --

    def _content(self, raw: bytes, complete: bool) -> tuple[dict[str, Any] | None, str | None]:
        """(record or None, why it is bad or None)."""
        if not complete:
            return None, "torn line: no newline at its end (crash mid-write, or truncated)"
        try:
            rec = json.loads(raw)
        except (ValueError, RecursionError):
            return None, "unparseable line: not JSON (edited or corrupted)"
        chain = rec.get("guard") if isinstance(rec, dict) else None
        if not _chain_fields_ok(chain):
            return None, "no valid chain fields guard.seq/prev/alg/hash (edited or foreign)"
        assert isinstance(chain, dict)
        try:
            body = canonical_json({**rec, "guard": {k: v for k, v in chain.items()
                                                    if k != "hash"}})
            canonical = canonical_json(rec).encode("ascii") == raw
        except (ValueError, TypeError, RecursionError):
            return rec, "holds values the writer never writes (edited)"
        why = self._hash_problem(chain, body)
        if why is None and not canonical:
            why = "not in canonical form: bytes changed without changing content (edited)"
        return rec, why

    def _hash_problem(self, chain: dict[str, Any], body: str) -> str | None:
        alg = chain["alg"]
        if self.key is None and alg == ALG_HMAC:
            self.unchecked += 1
            return None
        if self.key is not None and alg != ALG_HMAC:
            if self.signed == 0 and not self.problems:
                # Perhaps written before signing was on: checked as a plain chain, and
                # the first signed record must follow on from it.
                want = chain_digest(chain["prev"], body, None)
                if not hmac.compare_digest(want, chain["hash"]):
                    return "hash does not match its content (edited)"
                if self.plain_first is None:
                    self.plain_first = chain["seq"]
                return None
            return f"not signed with the key (guard.alg is {alg!r}; rewritten without it?)"
        want = chain_digest(chain["prev"], body, self.key)
        if not hmac.compare_digest(want, chain["hash"]):
            return "hash does not match its content (edited)"
        if self.key is not None:
            self.signed += 1
        return None

    # -- a line against the ones before it --

    def _bad(self, file: str, lineno: int, raw: bytes, why: str) -> None:
        if self.last_good is None:
            self.leading.append((len(self.problems), _seq_hint(raw)))
            self.problems.append(Problem(file, lineno, None, why))
        else:
            self.problems.append(Problem(file, lineno, self.last_good + self.bad_run + 1, why))
        self.bad_run += 1

    def _link(self, file: str, lineno: int, rec: dict[str, Any]) -> None:
        seq: int = rec["guard"]["seq"]
        prev: str = rec["guard"]["prev"]
        if self.last_good is None:
            self._first_trusted(file, lineno, seq, prev)
            return
        low, high = self.last_good, self.last_good + self.bad_run + 1
        if self.first_seq is not None and seq < self.first_seq:
            # Older than the log's first record: the head was reordered (a rotated log
            # may start at any seq, so the misplaced record was taken for the start).
            self.problems.append(Problem(file, lineno, seq, f"seq {seq} comes after seq "
                                         f"{low} but before the log's first record, seq "
                                         f"{self.first_seq} (moved or reordered)"))
            self.bad_run += 1
            return
        if seq <= low:
            self._bad(file, lineno, b"", f"seq {seq} repeats or goes back after seq {low} "
                      f"(inserted, duplicated or reordered)")
            return
        if seq > high:
            missing = seq - high
            self.problems.append(Problem(file, lineno, high, f"seq jumps to {seq}: {missing} "
                                         f"record(s) missing before it (deleted)"))
        elif self.bad_run == 0 and prev != self.prev_digest:
            pfile, pline = self.prev_where
            self.problems.append(Problem(pfile, pline, seq - 1, "the next record's "
                                         "guard.prev does not match this line (replaced, "
                                         "or edited and re-hashed)"))
        self.last_good, self.bad_run = seq, 0

    def _place_unanchored(self) -> None:
        """No record was trusted at all (e.g. the wrong key): position bad lines by the
        seq they seem to hold, else one after the line before."""
        guess = 0
        for index, hint in self.leading:
            guess = hint if hint is not None and hint > guess else guess + 1
            self.problems[index] = replace(self.problems[index], seq=guess)
        self.leading.clear()

    def _first_trusted(self, file: str, lineno: int, seq: int, prev: str) -> None:
        """The oldest trusted record anchors the chain; earlier bad lines get positions."""
        for i, (index, hint) in enumerate(self.leading):
            guess = hint if hint is not None and 1 <= hint < seq else seq - self.bad_run + i
            self.problems[index] = replace(self.problems[index], seq=max(1, guess))
        self.leading.clear()
        if seq == 1 and prev != ZERO_HASH and self.bad_run == 0:
            self.problems.append(Problem(file, lineno, 1, "the first record's guard.prev "
                                         "is not 64 zeros (edited)"))
        elif seq > 1 and self.bad_run == 0 and self.never_rotated:
            self.problems.append(Problem(file, lineno, 1, f"the log starts at seq {seq} and "
                                         f"has no rotated files: {seq - 1} record(s) "
                                         f"missing (deleted)"))
        self.last_good, self.bad_run, self.first_seq = seq, 0, seq


def _chain_fields_ok(chain: Any) -> bool:
    if not isinstance(chain, dict):
        return False
    seq, prev, digest = chain.get("seq"), chain.get("prev"), chain.get("hash")
    return (type(seq) is int and seq >= 1 and chain.get("alg") in (ALG_PLAIN, ALG_HMAC)
            and isinstance(prev, str) and _HEX64.match(prev) is not None
            and isinstance(digest, str) and _HEX64.match(digest) is not None)


def _seq_hint(raw: bytes) -> int | None:
    """The seq a broken line seems to hold: positions bad lines before the first good one."""
    m = _SEQ_HINT.search(raw)
    return int(m.group(1)) if m else None


# --- following the log ------------------------------------------------------------------

class LogRecord(dict):  # type: ignore[type-arg]
    """A record as ``iter_records`` yields it: the parsed dict, plus ``raw``, the line's
    bytes exactly as in the file (without the newline), for shipping it unchanged."""

    __slots__ = ("raw",)

    def __init__(self, rec: dict[str, Any], raw: bytes) -> None:
        super().__init__(rec)
        self.raw = raw


def iter_records(path: Path, follow: bool = False, poll_s: float = 0.2,
                 stop: threading.Event | None = None, *, after_seq: int | None = None,
                 on_idle: Callable[[], None] | None = None) -> Iterator[dict[str, Any]]:
    """Records from all of the log's files, oldest first; with ``follow``, then new ones.

    Follows across rotations (inode change: the rest of the old file is read, then the
    new one) and in-place truncation. Whenever the next record's seq skips ahead (several
    rotations between polls, a rename race), the missing ones are read from the rotated
    files first, so records come in seq order, each once. Records rotated out (``keep``)
    before they were read are skipped. Ends when ``stop`` is set (checked every
    ``poll_s``). A line that is not JSON is yielded as ``{"event": {"action":
    "unparseable-line"}, "message": <its text>}``; a last line still being written is held
    back until complete. Does not verify the chain: that is ``verify_log``.

    Every record is a ``LogRecord`` (a dict; ``.raw`` holds the line's bytes).
    ``after_seq``: start after this seq; rotated files wholly before it are not read
    (lines without a seq in the files that are read still come). ``on_idle``: called
    on the reading thread each time ``follow`` has caught up, before it waits; what it
    raises ends the iteration.
    """
    path = Path(path)
    seen = _SeqFilter()
    seen.last = after_seq if after_seq is not None and after_seq > 0 else None
    tail = _Tail(path)      # pinned before listing: a rotation now cannot hide its records
    try:
        yield from _read_rotated(path, seen)
        yield from _admit_in_order(tail.read(), path, seen)
        while follow:
            if on_idle is not None:
                on_idle()
            if _wait(stop, poll_s):
                break
            yield from _admit_in_order(tail.poll(), path, seen)
    finally:
        tail.close()


def _admit_in_order(lines: list[bytes], path: Path, seen: "_SeqFilter"
                    ) -> Iterator[dict[str, Any]]:
    """Records of the current file's new lines, filling any seq gap from rotated files."""
    for raw in lines:
        rec = _parse(raw, path)
        seq = _seq_of(rec)
        if seq is not None and seen.last is not None and seq > seen.last + 1:
            yield from _read_rotated(path, seen)
        yield from seen.admit_all([rec])


def _read_rotated(path: Path, seen: "_SeqFilter") -> Iterator[dict[str, Any]]:
    """Rotated records after the last one yielded, in order.

    A seq jump inside them usually means a concurrent rotation renamed a file past the
    walk: look again (3 times without progress at most), then accept the jump (records
    rotated out, or deleted).
    """
    misses = 0
    while misses < 3:
        before = seen.last
        jumped = yield from _admit_contiguous(_rotated_records(path, before), seen)
        if not jumped:
            return
        misses = misses + 1 if seen.last == before else 0
    yield from seen.admit_all(_rotated_records(path, seen.last))


def _admit_contiguous(records: Generator[dict[str, Any], None, None], seen: "_SeqFilter"
                      ) -> Generator[dict[str, Any], None, bool]:
    """Admit records until one skips a seq; returns whether that happened."""
    with contextlib.closing(records):
        for rec in records:
            seq = _seq_of(rec)
            if seq is not None and seen.last is not None and seq > seen.last + 1:
                return True
            yield from seen.admit_all([rec])
    return False


class _SeqFilter:
    """Drops records already yielded (seq not above the last); a fresh log resets it."""

    def __init__(self) -> None:
        self.last: int | None = None

    def admit_all(self, records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for rec in records:
            seq = _seq_of(rec)
            if seq is None:
                yield rec
                continue
            if seq == 1 and rec["guard"].get("prev") == ZERO_HASH:
                self.last = None   # the log was started afresh
            if self.last is None or seq > self.last:
                self.last = seq
                yield rec


class _Tail:
    """The current file, held open by descriptor so a rename cannot take it away."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh: BinaryIO | None = None
        self.ident: tuple[int, int] | None = None
        self.buf = b""
        self._open()

    def _open(self) -> None:
        try:
            self.fh = open(self.path, "rb")
        except FileNotFoundError:
            self.fh, self.ident = None, None
            return
        st = os.fstat(self.fh.fileno())
        self.ident, self.buf = (st.st_dev, st.st_ino), b""

    def read(self) -> list[bytes]:
        """Complete lines added since the last read (a partial last line waits)."""
        if self.fh is None:
            return []
        self.buf += self.fh.read()
        *lines, self.buf = self.buf.split(b"\n")
        return lines

    def poll(self) -> list[bytes]:
        """New lines; after a rotation, the old file's last ones then the new file's."""
        lines = self.read()
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return lines                 # mid-rotation: the new file is not there yet
        if self.fh is None or (st.st_dev, st.st_ino) != self.ident:
            lines += self.read()         # the old file's last words, then switch
            self.close()
            self._open()
            return lines + self.read()
        if st.st_size < self.fh.tell():  # truncated in place: start over
            self.fh.seek(0)
            self.buf = b""
        return lines

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def _rotated_records(path: Path, after: int | None) -> Generator[dict[str, Any], None, None]:
    """Records of the rotated files holding seqs above ``after`` (all when None), in order.

    Opens files newest first and keeps the descriptors, so names shifting under a
    concurrent rotation cannot make a file be read twice or out of order: duplicates are
    dropped by inode, and files are ordered by their first seq, not by name.
    """
    opened: list[tuple[float, BinaryIO]] = []
    inodes: set[tuple[int, int]] = set()
    try:
        for n in rotated_numbers(path):
            try:
                fh = open(rotated_path(path, n), "rb")
            except FileNotFoundError:
                continue
            st = os.fstat(fh.fileno())
            if (st.st_dev, st.st_ino) in inodes:
                fh.close()
                continue
            inodes.add((st.st_dev, st.st_ino))
            first = _first_seq(fh)
            opened.append((float("inf") if first is None else first, fh))
            if after is not None and first is not None and first <= after + 1:
                break                    # this file holds the start of the gap
        opened.sort(key=lambda pair: pair[0])
        for _, fh in opened:
            for raw in fh:
                if raw.endswith(b"\n"):
                    yield _parse(raw[:-1], Path(fh.name))
    finally:
        for _, fh in opened:
            fh.close()


def _first_seq(fh: BinaryIO) -> int | None:
    """Seq of the first record in an open file (rewound afterwards)."""
    try:
        for raw in fh:
            seq = record_seq(raw)
            if seq is not None:
                return seq
        return None
    finally:
        fh.seek(0)


def _seq_of(rec: dict[str, Any]) -> int | None:
    chain = rec.get("guard")
    seq = chain.get("seq") if isinstance(chain, dict) else None
    return seq if type(seq) is int else None


def _parse(raw: bytes, f: Path) -> dict[str, Any]:
    try:
        rec = json.loads(raw)
        if isinstance(rec, dict):
            return LogRecord(rec, raw)
    except (ValueError, RecursionError):
        pass
    return LogRecord({"event": {"action": "unparseable-line"},
                      "log": {"file": {"path": str(f)}},
                      "message": raw.decode("utf-8", "replace")}, raw)


def _wait(stop: threading.Event | None, poll_s: float) -> bool:
    """Sleep one poll; True when it is time to stop."""
    if stop is None:
        time.sleep(poll_s)
        return False
    return stop.wait(poll_s)


# --- rendering -------------------------------------------------------------------------

def format_record(rec: dict[str, Any]) -> str:
    """One line for people: time, action, outcome, path, verdict: message.

    Control, format (bidi overrides, zero-width) and separator characters are shown as
    escapes (``\\x1b``, ``\\u202e``), and backslashes doubled, so a hostile file name can
    neither drive the terminal nor fake a second line.
    """
    verdict = _field(rec, "guard.verdict")
    message = _field(rec, "message") or _field(rec, "event.reason") or _field(rec, "error.message")
    parts = [_field(rec, "@timestamp") or "-", _field(rec, "event.action") or "-",
             _field(rec, "event.outcome") or "-", _field(rec, "file.path") or "-"]
    tail = f"{verdict}: {message}" if verdict and message else verdict or message
    if tail:
        parts.append(tail)
    return " ".join(escape_text(p) for p in parts)


_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def escape_text(s: str) -> str:
    """Printable, one-line form of ``s``: unsafe characters as Python-style escapes."""
    out = []
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif unicodedata.category(ch) in _UNSAFE_CATEGORIES:
            cp = ord(ch)
            out.append(f"\\x{cp:02x}" if cp < 0x100 else
                       f"\\u{cp:04x}" if cp < 0x10000 else f"\\U{cp:08x}")
        else:
            out.append(ch)
    return "".join(out)


def _field(rec: dict[str, Any], dotted: str) -> str:
    """A nested field as text ("" when absent); a flat dotted key works too."""
    value: Any = rec
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        value = rec.get(dotted)
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)
