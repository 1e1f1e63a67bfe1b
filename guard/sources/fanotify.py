"""Linux fanotify permission events: every exec (and interpreter open) of a file in a
watched folder waits for our answer.

Thin ctypes binding, no policy: ``FanotifyGuard`` reads events, answers the cheap ones at
once from a callback, and gives the rest to a decision pool under a deadline. An event
that is not decided in time is answered by the fail mode (allow by default: "fail-open",
logged) so no process ever hangs on us. Closing the fanotify descriptor makes the kernel
allow everything still pending, so even a crash of the agent leaves no process hung.

An event's descriptor stays open until the event is answered *and* no decision task can
still read it (a task still queued when the deadline answers is cancelled; one already
running closes it when it returns): a descriptor number is never reused while anything
may act on the event it named, so a late decision can neither answer nor describe
another event.

Marks are placed on the watched folders and each folder below them (fanotify's
FAN_EVENT_ON_CHILD covers direct children only), and a mount mark on each mount whose
mount point is a watched folder or lies below one (also mounts made later: MountWatch);
never on a whole filesystem, and never on anything whose real path is outside the
watched folders (``confine``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import heapq
import os
import re
import stat
import struct
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ..errors import SourceUnavailable
from ..verdict import How

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
FAN_MARK_MOUNT = 0x00000010
FAN_MARK_FLUSH = 0x00000080
FAN_OPEN_PERM = 0x00010000
FAN_OPEN_EXEC_PERM = 0x00040000
FAN_EVENT_ON_CHILD = 0x08000000
FAN_ALLOW = 0x01
FAN_DENY = 0x02
FAN_NOFD = -1
_AT_FDCWD = -100
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_DIR_MARK = FAN_MARK_ADD | FAN_MARK_ONLYDIR
_META = struct.Struct("=IBBHQii")          # event_len, vers, reserved, metadata_len, mask, fd, pid
_RESPONSE = struct.Struct("=iI")
_READ_BYTES = 64 * 1024

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_init.restype = ctypes.c_int
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                                ctypes.c_char_p]
_libc.fanotify_mark.restype = ctypes.c_int


_DIR_MASK = FAN_OPEN_EXEC_PERM | FAN_OPEN_PERM | FAN_EVENT_ON_CHILD


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def _fd_mount_id(fd: int) -> int:
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as fh:
            for line in fh:
                if line.startswith(b"mnt_id:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return -1


def _unescape(field: bytes) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo (octal)."""
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]),
                              field))


def mount_points() -> dict[str, int]:
    """Mount point -> mount ID in this mount namespace (the visible one where mounts are
    stacked on one point)."""
    try:
        with open("/proc/self/mountinfo", "rb") as fh:
            data = fh.read()
    except OSError:
        return {}
    out: dict[str, int] = {}
    for line in data.splitlines():
        fields = line.split(b" ")
        if len(fields) > 4 and fields[0].isdigit():
            out[_unescape(fields[4])] = int(fields[0])
    return out


class MountWatch:
    """Calls ``on_change()`` after each change of this mount namespace's mount table
    (poll(2) on /proc/self/mountinfo wakes with POLLPRI), on its own thread."""

    def __init__(self, on_change: Callable[[], None]):
        self.on_change = on_change
        self.errors = 0
        self._fd = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
        self._wake_r, self._wake_w = os.pipe()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="guard-mounts", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        os.write(self._wake_w, b"x")
        if self._thread.ident is not None:
            self._thread.join(2.0)
        for fd in (self._fd, self._wake_r, self._wake_w):
            os.close(fd)

    def _loop(self) -> None:
        import select
        poller = select.poll()
        poller.register(self._fd, select.POLLPRI | select.POLLERR)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stop.is_set():
            try:
                ready = poller.poll()
            except InterruptedError:
                continue
            if self._stop.is_set():
                return
            if any(fd == self._fd for fd, _ in ready):
                try:
                    self.on_change()
                except Exception:
                    self.errors += 1


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
    how: How
    because: str = ""
    detail: Any = field(default=None, compare=False)   # the deciding side's, for report


Quick = Callable[[PermEvent], "Answer | None"]     # cheap: on the reader thread, or None
Decide = Callable[[PermEvent], Answer]             # may be slow: on the pool
Report = Callable[[PermEvent, Answer, float], None]  # after the answer, fd still open


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
        self.marked: dict[str, tuple[int, int]] = {}   # folder (real path) -> dev, ino
        self.marked_mounts: dict[int, str] = {}         # mount ID -> mount point
        self.marked_files: set[tuple[int, int]] = set()
        self.confine: tuple[str, ...] = ()   # real paths marks must stay under (owner sets)
        self.on_error: Callable[[str], None] | None = None   # told of each failure
        self.stats = {"events": 0, "allowed": 0, "denied": 0, "timeouts": 0, "errors": 0,
                      "refused": 0}
        flags = FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_UNLIMITED_QUEUE | FAN_UNLIMITED_MARKS
        fd = _libc.fanotify_init(flags, os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC)
        if fd < 0:
            raise SourceUnavailable(f"fanotify_init: {os.strerror(ctypes.get_errno())}")
        self.fd = fd
        self._pending: dict[int, PermEvent] = {}          # fd -> event, until answered
        self._tasks: dict[int, Future] = {}               # fd -> its decision task
        self._holds: dict[int, int] = {}                  # fd -> holders; closed at 0
        self._heap: list[tuple[float, int, PermEvent]] = []
        self._seq = 0
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
    # Every mark is placed through a descriptor of the object, opened without following a
    # link in its last component, whose real path is checked first: a folder swapped for a
    # link (or a parent swapped) between the walk and the mark can never put a mark on
    # /usr/bin or on a whole system mount.
    def _confined(self, real: str) -> bool:
        if real == "/" or not real.startswith("/"):
            return False
        return not self.confine or any(real == r or real.startswith(r.rstrip("/") + "/")
                                       for r in self.confine)

    def _mark_fd(self, flags: int, mask: int, fd: int, name: str | None = None) -> bool:
        r = _libc.fanotify_mark(self.fd, flags, mask, fd,
                                None if name is None else os.fsencode(name))
        return r == 0

    def mark_tree(self, top: str, exclude: Callable[[str], bool] = lambda p: False,
                  mounts: dict[str, int] | None = None) -> int:
        """Mark *top* and every folder below it (links not followed). A mount point below
        *top* is not walked into: its mount gets a mount mark (mark_mounts), because its
        folders may also be reachable outside the watched folder (a bind mount of
        /usr/bin), where inode marks would follow them. Returns the count."""
        if os.path.realpath(top) == "/":
            raise SourceUnavailable("refusing to mark the root folder", path=top)
        mounts = mount_points() if mounts is None else mounts
        count = 0
        stack = [top]
        while stack:
            folder = stack.pop()
            if exclude(folder):
                continue
            try:
                fd = os.open(folder, _DIR_FLAGS)
            except OSError:
                continue
            try:
                real = _fd_path(fd)
                if not self._confined(real):
                    self.stats["refused"] += 1
                    continue
                if folder != top and real in mounts:
                    continue                       # its own mount: a mount mark
                if self._mark_fd(_DIR_MARK, _DIR_MASK, fd):
                    st = os.fstat(fd)
                    self.marked[real] = (st.st_dev, st.st_ino)
                    count += 1
                with os.scandir(fd) as it:
                    for entry in it:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(os.path.join(folder, entry.name))
            except OSError:
                continue
            finally:
                os.close(fd)
        return count

    def mark(self, folder: str) -> bool:
        """Mark one folder (its direct children's opens and execs)."""
        if os.path.realpath(folder) == "/":
            raise SourceUnavailable("refusing to mark the root folder", path=folder)
        try:
            fd = os.open(folder, _DIR_FLAGS)
        except OSError:
            return False
        try:
            real = _fd_path(fd)
            if not self._confined(real):
                self.stats["refused"] += 1
                return False
            # always asked of the kernel (adding a mark twice is harmless): a folder that
            # was removed and made again under the same name is a new inode, unmarked
            if not self._mark_fd(_DIR_MARK, _DIR_MASK, fd):
                return False
            st = os.fstat(fd)
            self.marked[real] = (st.st_dev, st.st_ino)
            return True
        finally:
            os.close(fd)

    def mark_mounts(self, roots: Iterable[str]) -> int:
        """Give every mount whose mount point is a watched root or lies below one a mount
        mark: it covers that mount's whole tree, and only as seen through this mount
        point. Mounts made after start (a USB stick, a tmpfs) are passed in by the mount
        watch. Returns how many new marks were placed."""
        roots = tuple(r.rstrip("/") or "/" for r in roots)
        current = mount_points()
        for mid in [m for m in self.marked_mounts if m not in current.values()]:
            del self.marked_mounts[mid]             # unmounted: the kernel dropped it
        count = 0
        for point, mid in current.items():
            if mid in self.marked_mounts or point == "/" or not any(
                    point == r or point.startswith(r + "/") for r in roots):
                continue
            try:
                fd = os.open(point, _DIR_FLAGS)
            except OSError:
                continue
            try:
                # the descriptor is the root of exactly that mount, wherever links lead
                if _fd_mount_id(fd) != mid or _fd_path(fd) != point \
                        or not self._confined(point):
                    self.stats["refused"] += 1
                    continue
                if self._mark_fd(FAN_MARK_ADD | FAN_MARK_MOUNT,
                                 FAN_OPEN_EXEC_PERM | FAN_OPEN_PERM, fd):
                    self.marked_mounts[mid] = point
                    count += 1
            finally:
                os.close(fd)
        return count

    def mark_file(self, path: str) -> bool:
        """Mark one file (an inode mark: it follows the file when it is moved or renamed
        on its file system), so its launches are asked about wherever it goes."""
        parent, name = os.path.split(os.path.normpath(path))
        try:
            dfd = os.open(parent or ".", _DIR_FLAGS)
        except OSError:
            return False
        try:
            if not self._confined(_fd_path(dfd)):
                self.stats["refused"] += 1
                return False
            st = os.lstat(name, dir_fd=dfd)
            key = (st.st_dev, st.st_ino)
            if key in self.marked_files:
                return True
            if len(self.marked_files) >= _MAX_FILE_MARKS or not stat.S_ISREG(st.st_mode):
                return False
            # resolved from the checked folder, last component not followed
            if not self._mark_fd(FAN_MARK_ADD | FAN_MARK_DONT_FOLLOW,
                                 FAN_OPEN_EXEC_PERM | FAN_OPEN_PERM, dfd, name):
                return False
            self.marked_files.add(key)
            return True
        except OSError:
            return False
        finally:
            os.close(dfd)

    def unmark_all(self) -> None:
        _libc.fanotify_mark(self.fd, FAN_MARK_FLUSH, 0, _AT_FDCWD, None)
        _libc.fanotify_mark(self.fd, FAN_MARK_FLUSH | FAN_MARK_MOUNT, 0, _AT_FDCWD, None)
        self.marked.clear()
        self.marked_mounts.clear()

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
        for thread in (self._reader, self._timer):
            if thread.ident is not None:      # close() before start() (a failed start)
                thread.join(2.0)
        with self._lock:
            for fd in list(self._pending):
                self._write_response(fd, True)
                self._release(fd)
            self._pending.clear()
            for fd, task in list(self._tasks.items()):
                if task.cancel():
                    del self._tasks[fd]
                    self._release(fd)
        self._pool.shutdown(wait=False, cancel_futures=True)
        os.close(self.fd)
        os.close(self._wake_r)
        os.close(self._wake_w)

    # --- answering -----------------------------------------------------------------------
    def _failed(self, message: str) -> None:
        """Counted (``stats['errors']``) and handed to ``on_error``, never dropped."""
        self.stats["errors"] += 1
        if self.on_error is not None:
            self.on_error(message)

    def _write_response(self, fd: int, allow: bool) -> None:
        try:
            os.write(self.fd, _RESPONSE.pack(fd, FAN_ALLOW if allow else FAN_DENY))
        except OSError as exc:
            self._failed(f"fanotify: an answer could not be written: {exc}")

    def _release(self, fd: int) -> None:
        """Drop one hold on an event's descriptor (caller holds the lock); the last one
        closes it."""
        left = self._holds.get(fd, 1) - 1
        if left > 0:
            self._holds[fd] = left
            return
        self._holds.pop(fd, None)
        try:
            os.close(fd)
        except OSError:
            pass

    def answer(self, ev: PermEvent, ans: Answer) -> bool:
        """Answer once; later answers for the same event are ignored. Reports after, with
        the descriptor still open; a decision task still queued is cancelled."""
        with self._lock:
            if self._pending.get(ev.fd) is not ev:
                return False
            del self._pending[ev.fd]
            self._write_response(ev.fd, ans.allow)
            task = self._tasks.get(ev.fd)
            if task is not None and task.cancel():
                del self._tasks[ev.fd]
                self._release(ev.fd)
        self.stats["allowed" if ans.allow else "denied"] += 1
        try:
            self.report(ev, ans, time.monotonic() - ev.received)
        except Exception as exc:  # noqa: BLE001 - the answer went out; the record is lost
            self._failed(f"fanotify: a launch was answered but not reported: "
                         f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._release(ev.fd)
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
                self._failed(f"fanotify: reading events failed: {exc}")
                time.sleep(0.01)
                continue
            now = time.monotonic()
            for ev in _parse(buf, now):
                self._handle(ev)

    def _handle(self, ev: PermEvent) -> None:
        self.stats["events"] += 1
        with self._lock:
            self._pending[ev.fd] = ev
            self._holds[ev.fd] = 1
        try:
            ans = self.quick(ev)
        except Exception as exc:  # noqa: BLE001 - the decision pool answers it instead
            self._failed(f"fanotify: a quick answer failed: {type(exc).__name__}: {exc}")
            ans = None
        if ans is not None:
            self.answer(ev, ans)
            return
        with self._cv:
            if self._pending.get(ev.fd) is not ev:
                return                   # close() answered it meanwhile
            # the deadline and the task are in place before either can act
            self._seq += 1
            heapq.heappush(self._heap, (ev.received + self.deadline_s, self._seq, ev))
            self._holds[ev.fd] += 1
            try:
                self._tasks[ev.fd] = self._pool.submit(self._decide, ev)
            except RuntimeError:         # closing: close() answers what is pending
                self._release(ev.fd)
            self._cv.notify()

    def _decide(self, ev: PermEvent) -> None:
        try:
            with self._lock:
                live = self._pending.get(ev.fd) is ev
            if live:                   # answered by the deadline while queued: skip
                try:
                    ans = self.decide(ev)
                except Exception as exc:
                    ans = Answer(not self.fail_closed, How.FAIL_CLOSED if self.fail_closed
                                 else How.FAIL_OPEN,
                                 f"decision failed: {type(exc).__name__}: {exc}")
                self.answer(ev, ans)
        finally:
            with self._lock:
                self._tasks.pop(ev.fd, None)
                self._release(ev.fd)

    def _deadline_loop(self) -> None:
        while not self._stop.is_set():
            with self._cv:
                while not self._heap and not self._stop.is_set():
                    self._cv.wait()          # new deadlines and close() notify
                if self._stop.is_set():
                    return
                due, _seq, ev = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cv.wait(wait)
                    continue
                heapq.heappop(self._heap)
                if self._pending.get(ev.fd) is not ev:
                    continue                      # answered already
            if ev.received + self.deadline_s <= time.monotonic() + 1e-3:
                how = How.FAIL_CLOSED if self.fail_closed else How.FAIL_OPEN
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
