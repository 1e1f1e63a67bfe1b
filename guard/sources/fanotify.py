"""Linux fanotify permission events: every exec (and interpreter open) of a file in a
watched folder waits for our answer.

Thin ctypes binding, no policy: ``FanotifyGuard`` reads events, answers the cheap ones at
once from a callback, and gives the rest to a decision pool under a deadline. An event
that is not decided in time is answered by the fail mode (allow by default: "fail-open",
logged) so no process ever hangs on us. Closing the fanotify descriptor makes the kernel
allow everything still pending, so even a crash of the agent leaves no process hung.

Marks are placed on the watched folders and each folder below them (fanotify's
FAN_EVENT_ON_CHILD covers direct children only); never on a whole filesystem.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import heapq
import os
import stat
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable

from ..errors import SourceUnavailable

FAN_CLOEXEC = 0x00000001
FAN_NONBLOCK = 0x00000002
FAN_CLASS_CONTENT = 0x00000004
FAN_UNLIMITED_QUEUE = 0x00000010
FAN_UNLIMITED_MARKS = 0x00000020
_MAX_FILE_MARKS = 10_000   # each pins an inode in kernel memory

FAN_MARK_ADD = 0x00000001
FAN_MARK_REMOVE = 0x00000002
FAN_MARK_DONT_FOLLOW = 0x00000004
FAN_MARK_ONLYDIR = 0x00000008
FAN_MARK_FLUSH = 0x00000080
FAN_OPEN_PERM = 0x00010000
FAN_OPEN_EXEC_PERM = 0x00040000
FAN_EVENT_ON_CHILD = 0x08000000
FAN_ALLOW = 0x01
FAN_DENY = 0x02
FAN_NOFD = -1
_AT_FDCWD = -100
_META = struct.Struct("=IBBHQii")          # event_len, vers, reserved, metadata_len, mask, fd, pid
_RESPONSE = struct.Struct("=iI")
_READ_BYTES = 64 * 1024

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_init.restype = ctypes.c_int
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                                ctypes.c_char_p]
_libc.fanotify_mark.restype = ctypes.c_int


@dataclass(frozen=True)
class PermEvent:
    """One permission request: the opened file's descriptor (ours until answered)."""
    fd: int
    pid: int
    mask: int
    received: float        # time.monotonic()

    @property
    def is_exec(self) -> bool:
        return bool(self.mask & FAN_OPEN_EXEC_PERM)

    def path(self) -> str:
        try:
            return os.readlink(f"/proc/self/fd/{self.fd}")
        except OSError:
            return ""


@dataclass(frozen=True)
class Answer:
    allow: bool
    how: str               # "cache", "exempt", "decided", "fail-open", "fail-closed"
    because: str = ""


Quick = Callable[[PermEvent], "Answer | None"]     # cheap: on the reader thread, or None
Decide = Callable[[PermEvent], Answer]             # may be slow: on the pool
Report = Callable[[PermEvent, Answer, float], None]  # after the answer: audit, stats


def available() -> tuple[bool, str]:
    """Whether fanotify permission events can be used here, and why not."""
    if not hasattr(os, "geteuid") or os.uname().sysname != "Linux":
        return False, "not Linux"
    fd = _libc.fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC, os.O_RDONLY)
    if fd < 0:
        err = ctypes.get_errno()
        return False, f"fanotify_init: {os.strerror(err)}" + (
            " (needs root / CAP_SYS_ADMIN)" if err == errno.EPERM else "")
    os.close(fd)
    return True, "fanotify permission events"


class FanotifyGuard:
    def __init__(self, quick: Quick, decide: Decide, report: Report,
                 deadline_s: float = 1.0, fail_closed: bool = False, workers: int = 4):
        self.quick, self.decide, self.report = quick, decide, report
        self.deadline_s = deadline_s
        self.fail_closed = fail_closed
        self.marked: set[str] = set()
        self.marked_files: set[tuple[int, int]] = set()
        self.stats = {"events": 0, "allowed": 0, "denied": 0, "timeouts": 0, "errors": 0}
        flags = FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_UNLIMITED_QUEUE | FAN_UNLIMITED_MARKS
        fd = _libc.fanotify_init(flags, os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC)
        if fd < 0:
            raise SourceUnavailable(f"fanotify_init: {os.strerror(ctypes.get_errno())}")
        self.fd = fd
        self._pending: dict[int, PermEvent] = {}
        self._heap: list[tuple[float, int]] = []
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="guard-decide")
        self._reader = threading.Thread(target=self._read_loop, name="guard-fanotify",
                                        daemon=True)
        self._timer = threading.Thread(target=self._deadline_loop, name="guard-deadline",
                                       daemon=True)
        self._wake_r, self._wake_w = os.pipe()

    # --- marks ---------------------------------------------------------------------------
    def mark_tree(self, top: str, exclude: Callable[[str], bool] = lambda p: False) -> int:
        """Mark *top* and every folder below it (links not followed). Returns the count."""
        count = 0
        stack = [top]
        while stack:
            folder = stack.pop()
            if exclude(folder):
                continue
            if self.mark(folder):
                count += 1
            try:
                with os.scandir(folder) as it:
                    for entry in it:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
            except OSError:
                continue
        return count

    def mark(self, folder: str) -> bool:
        if folder in self.marked:
            return True
        if os.path.realpath(folder) == "/":
            raise SourceUnavailable("refusing to mark the root folder", path=folder)
        mask = FAN_OPEN_EXEC_PERM | FAN_OPEN_PERM | FAN_EVENT_ON_CHILD
        r = _libc.fanotify_mark(self.fd, FAN_MARK_ADD | FAN_MARK_DONT_FOLLOW | FAN_MARK_ONLYDIR,
                                mask, _AT_FDCWD, os.fsencode(folder))
        if r < 0:
            return False
        self.marked.add(folder)
        return True

    def mark_file(self, path: str) -> bool:
        """Mark one file (an inode mark: it follows the file when it is moved or renamed
        on its file system), so its launches are asked about wherever it goes."""
        try:
            st = os.lstat(path)
        except OSError:
            return False
        key = (st.st_dev, st.st_ino)
        if key in self.marked_files:
            return True
        if len(self.marked_files) >= _MAX_FILE_MARKS or not stat.S_ISREG(st.st_mode):
            return False
        r = _libc.fanotify_mark(self.fd, FAN_MARK_ADD | FAN_MARK_DONT_FOLLOW,
                                FAN_OPEN_EXEC_PERM | FAN_OPEN_PERM, _AT_FDCWD,
                                os.fsencode(path))
        if r < 0:
            return False
        self.marked_files.add(key)
        return True

    def unmark_all(self) -> None:
        for folder in list(self.marked):
            _libc.fanotify_mark(self.fd, FAN_MARK_REMOVE | FAN_MARK_DONT_FOLLOW,
                                FAN_OPEN_EXEC_PERM | FAN_OPEN_PERM | FAN_EVENT_ON_CHILD,
                                _AT_FDCWD, os.fsencode(folder))
        self.marked.clear()

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._reader.start()
        self._timer.start()

    def close(self) -> None:
        """Stop; the kernel allows whatever is still pending when the fd closes."""
        self._stop.set()
        os.write(self._wake_w, b"x")
        with self._cv:
            self._cv.notify_all()
        self._reader.join(2.0)
        self._timer.join(2.0)
        with self._lock:
            for fd in list(self._pending):
                self._write_response(fd, True)
            self._pending.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
        os.close(self.fd)
        os.close(self._wake_r)
        os.close(self._wake_w)

    # --- answering -----------------------------------------------------------------------
    def _write_response(self, fd: int, allow: bool) -> None:
        try:
            os.write(self.fd, _RESPONSE.pack(fd, FAN_ALLOW if allow else FAN_DENY))
        except OSError:
            self.stats["errors"] += 1
        finally:
            try:
                os.close(fd)
            except OSError:
                pass

    def answer(self, ev: PermEvent, ans: Answer) -> bool:
        """Answer once; later answers for the same event are ignored. Reports after."""
        with self._lock:
            if self._pending.pop(ev.fd, None) is None:
                return False
            self._write_response(ev.fd, ans.allow)
        self.stats["allowed" if ans.allow else "denied"] += 1
        try:
            self.report(ev, ans, time.monotonic() - ev.received)
        except Exception:
            self.stats["errors"] += 1
        return True

    def _read_loop(self) -> None:
        import select
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stop.is_set():
            try:
                ready = poller.poll()        # close() wakes us through the pipe
            except InterruptedError:
                continue
            if self._stop.is_set():
                return
            if not any(fd == self.fd for fd, _ in ready):
                continue
            try:
                buf = os.read(self.fd, _READ_BYTES)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EINTR):
                    continue
                self.stats["errors"] += 1
                time.sleep(0.01)
                continue
            now = time.monotonic()
            for ev in _parse(buf, now):
                self._handle(ev)

    def _handle(self, ev: PermEvent) -> None:
        self.stats["events"] += 1
        with self._lock:
            self._pending[ev.fd] = ev
        try:
            ans = self.quick(ev)
        except Exception:
            self.stats["errors"] += 1
            ans = None
        if ans is not None:
            self.answer(ev, ans)
            return
        with self._cv:
            heapq.heappush(self._heap, (ev.received + self.deadline_s, ev.fd))
            self._cv.notify()
        self._pool.submit(self._decide, ev)

    def _decide(self, ev: PermEvent) -> None:
        try:
            ans = self.decide(ev)
        except Exception as exc:
            ans = Answer(not self.fail_closed, "fail-closed" if self.fail_closed else
                         "fail-open", f"decision failed: {type(exc).__name__}: {exc}")
        self.answer(ev, ans)

    def _deadline_loop(self) -> None:
        while not self._stop.is_set():
            with self._cv:
                while not self._heap and not self._stop.is_set():
                    self._cv.wait()          # new deadlines and close() notify
                if self._stop.is_set():
                    return
                due, fd = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cv.wait(wait)
                    continue
                heapq.heappop(self._heap)
                ev = self._pending.get(fd)
            if ev is not None and ev.received + self.deadline_s <= time.monotonic() + 1e-3:
                how = "fail-closed" if self.fail_closed else "fail-open"
                if self.answer(ev, Answer(not self.fail_closed, how,
                                          f"no decision within {self.deadline_s:g} s")):
                    self.stats["timeouts"] += 1


def _parse(buf: bytes, now: float) -> Iterable[PermEvent]:
    pos = 0
    while pos + _META.size <= len(buf):
        event_len, vers, _r, meta_len, mask, fd, pid = _META.unpack_from(buf, pos)
        if event_len < _META.size:
            break
        pos += event_len
        if fd == FAN_NOFD or fd < 0:
            continue              # overflow notice: nothing to answer
        yield PermEvent(fd, pid, mask, now)
