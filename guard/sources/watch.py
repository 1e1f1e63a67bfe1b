"""Watch folders with watchdog and hand over each file once it is complete.

A file is complete when the OS reports close-after-write (inotify IN_CLOSE_WRITE on
Linux), when it is renamed or moved into the folder (browsers rename a finished
`.crdownload`), or, where the OS reports neither, once its size and mtime have held still
for ``settle_s``. Partial-download names are ignored until renamed. Sweeps (``sweep``)
catch whatever the OS dropped.

An inotify queue overflow (IN_Q_OVERFLOW: the kernel dropped events, the creation of new
folders among them, so those folders have no watch) is seen, not only logged: watchdog 7
rebuilds every watch in place and tells nobody, and removing thousands of watches queues
as many IN_IGNORED events, which overflow the queue again, for ever. Here the reader
reports it instead; a fresh observer takes over (new watches on every folder), and
``on_overflow`` asks for a sweep, which gives every file its verdict.

MUST NOT scan or block: handlers only classify events and call ``on_ready``.
"""

from __future__ import annotations

import fnmatch
import heapq
import logging
import os
import stat
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator

from watchdog.events import (DirCreatedEvent, DirMovedEvent, FileClosedEvent,
                             FileCreatedEvent, FileModifiedEvent, FileMovedEvent,
                             FileSystemEvent, FileSystemEventHandler)
from watchdog.observers import Observer

from ..config import PARTIAL_SUFFIXES, WatchFolder
from ..verdict import Trigger

try:       # the inotify reader of watchdog >= 7; elsewhere overflows are left to sweeps
    from watchdog.observers.api import DEFAULT_OBSERVER_TIMEOUT, BaseObserver
    from watchdog.observers.inotify import InotifyEmitter, InotifyObserver
    from watchdog.observers.inotify_c import InotifyFD
    if not hasattr(InotifyFD, "handle_event"):
        InotifyFD = None
except Exception:          # not Linux, an unsupported libc, an older watchdog
    InotifyFD = None

OnReady = Callable[[Path, WatchFolder, Trigger], None]   # path, folder, what made it ready
_INTERNAL_PREFIX = ".guard-"                          # the vault's own aside names
_OVERFLOW_SETTLE_S = 0.5     # overflows come in bursts: one rewatch after it, not one each
_OVERFLOW_GAPS_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)   # between rewatches while they go on
_OVERFLOW_CALM_S = 60.0      # this long without a rewatch: back to the shortest gap

log = logging.getLogger(__name__)


def is_partial(name: str) -> bool:
    low = name.lower()
    return low.endswith(PARTIAL_SUFFIXES) or low.startswith(_INTERNAL_PREFIX) or \
        (low.startswith(".~lock.") or low.startswith("~$"))


class Excluder:
    def __init__(self, patterns: Iterable[str]):
        self.patterns = tuple(patterns)

    def __call__(self, path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) for p in self.patterns)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: "FolderWatcher", folder: WatchFolder):
        self.watcher = watcher
        self.folder = folder

    def on_any_event(self, event: FileSystemEvent) -> None:
        w = self.watcher
        try:
            if isinstance(event, FileClosedEvent):
                w.offer(os.fsdecode(event.src_path), self.folder, Trigger.CLOSED)
            elif isinstance(event, FileMovedEvent):
                w.offer(os.fsdecode(event.dest_path), self.folder, Trigger.MOVED)
            elif isinstance(event, (FileCreatedEvent, FileModifiedEvent)):
                w.settle(os.fsdecode(event.src_path), self.folder)
            elif isinstance(event, (DirCreatedEvent, DirMovedEvent)):
                # files written before the new folder's watch existed get no events
                target = event.dest_path if isinstance(event, DirMovedEvent) else event.src_path
                if w.on_new_folder is not None:
                    w.on_new_folder(os.fsdecode(target))
                w.sweep_folder(Path(os.fsdecode(target)), self.folder, Trigger.NEW_FOLDER)
        except Exception as exc:   # a handler must never kill the observer thread
            w.errors.append(f"watch handler: {type(exc).__name__}: {exc}")


class _FileChangeHandler(FileSystemEventHandler):
    """Calls *on_change* when one of *names* in a folder is written, created, moved or
    removed (editors and the CLI replace files by rename)."""

    def __init__(self, names: set[str], on_change: Callable[[], None]):
        self.names = names
        self.on_change = on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = (event.src_path, getattr(event, "dest_path", "") or "")
        if any(os.path.basename(os.fsdecode(p)) in self.names for p in paths if p):
            try:
                self.on_change()
            except Exception:
                pass


if InotifyFD is not None:
    class _ReportingReader(InotifyFD):
        """watchdog's inotify reader, except that a queue overflow goes to *on_overflow*
        instead of each watch group's rebuild in place (see the module's docstring).

        MUST NOT block: runs on the reader thread; *on_overflow* only takes note.
        """

        def __init__(self, on_overflow: Callable[[], None]):
            super().__init__()
            self._on_overflow = on_overflow

        def handle_event(self, event) -> None:
            if event.is_queue_overflow:
                try:
                    self._on_overflow()
                except Exception:      # the reader thread must live on
                    pass
                return
            super().handle_event(event)

    class _ReportingObserver(InotifyObserver):
        """InotifyObserver with a _ReportingReader: its __init__ with the reader swapped."""

        def __init__(self, on_overflow: Callable[[], None]):
            self._inotify_fd = _ReportingReader(on_overflow)
            self._inotify_fd.start()
            BaseObserver.__init__(self, InotifyEmitter, timeout=DEFAULT_OBSERVER_TIMEOUT,
                                  inotify_fd=self._inotify_fd)


def _new_observer(on_overflow: Callable[[], None]) -> Observer:
    if InotifyFD is not None and Observer is InotifyObserver:
        return _ReportingObserver(on_overflow)
    return Observer()


class FolderWatcher:
    """Owns one watchdog Observer (replaced after an inotify queue overflow), a settle
    timer thread and a rewatch thread.

    on_overflow: called (on the rewatch thread) once the fresh observer watches every
    folder, after an overflow lost events; at most once per gap, the gaps growing from 1
    to 30 s while overflows go on. on_new_folder is then called with each watched
    folder too: folders made during the overflow were never reported.
    """

    def __init__(self, folders: Iterable[WatchFolder], on_ready: OnReady,
                 exclude: Iterable[str] = (), settle_s: float = 0.5,
                 on_new_folder: Callable[[str], None] | None = None,
                 control_files: Iterable[str | os.PathLike[str]] = (),
                 on_control_change: Callable[[], None] | None = None,
                 on_overflow: Callable[[], None] | None = None):
        self.folders = tuple(folders)
        self.control_files = tuple(Path(p) for p in control_files)
        self.on_control_change = on_control_change
        self.on_new_folder = on_new_folder
        self.on_overflow = on_overflow
        self.on_ready = on_ready
        self.excluded = Excluder(exclude)
        self.settle_s = settle_s
        self.errors: list[str] = []
        self.watching: list[WatchFolder] = []
        self.overflows = 0                    # IN_Q_OVERFLOW events seen
        self.rewatches = 0                    # observers replaced after them
        self._observer: Observer | None = None
        self._generation = 0                  # of the observer in place
        self._overflow_due: float | None = None
        self._overflows_pending = 0
        self._last_rewatch = -_OVERFLOW_CALM_S
        self._gap = 0                         # index into _OVERFLOW_GAPS_S
        self._rewatch_cv = threading.Condition()
        self._heap: list[tuple[float, str, WatchFolder]] = []
        self._settling: dict[str, tuple[int, int]] = {}
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._rewatcher: threading.Thread | None = None

    def start(self) -> None:
        # watchdog warns, with its whole watch table, each time a new subfolder is added
        # under a recursive watch; it is expected here and says nothing useful.
        warnings.filterwarnings("ignore", message=".*already exists.*", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=".*already exists.*", category=UserWarning)
        self._observer, self.watching, errors = self._start_observer(1)
        self._generation = 1
        self.errors += errors
        self._timer = threading.Thread(target=self._settle_loop, name="guard-settle",
                                       daemon=True)
        self._timer.start()
        self._rewatcher = threading.Thread(target=self._rewatch_loop, name="guard-rewatch",
                                           daemon=True)
        self._rewatcher.start()

    def _start_observer(self, generation: int) -> tuple[Observer, list[WatchFolder], list[str]]:
        """A running observer watching every folder; returns it, the folders it watches and
        why the others are not watched."""
        observer = _new_observer(lambda: self._overflowed(generation))
        observer.daemon = True
        watching: list[WatchFolder] = []
        errors: list[str] = []
        for folder in self.folders:
            if not Path(folder.path).is_dir():
                errors.append(f"{folder.path}: not a folder; not watched")
                continue
            try:
                observer.schedule(_Handler(self, folder), os.fspath(folder.path),
                                  recursive=True,
                                  event_filter=[FileClosedEvent, FileMovedEvent,
                                                FileCreatedEvent, FileModifiedEvent,
                                                DirCreatedEvent, DirMovedEvent])
                watching.append(folder)
            except OSError as exc:
                errors.append(f"{folder.path}: cannot watch: {exc.strerror or exc}")
        self._watch_control_files(observer)
        try:
            observer.start()
        except BaseException:
            observer.stop()            # its inotify reader already runs
            raise
        return observer, watching, errors

    def _watch_control_files(self, observer: Observer) -> None:
        """The allowlist and break-glass file: a change wakes the agent at once. A folder
        that does not exist is skipped; the agent's periodic check still sees it."""
        if self.on_control_change is None:
            return
        by_folder: dict[str, set[str]] = {}
        for p in self.control_files:
            by_folder.setdefault(os.fspath(p.parent), set()).add(p.name)
        for folder, names in by_folder.items():
            if not os.path.isdir(folder):
                continue
            try:
                observer.schedule(_FileChangeHandler(names, self.on_control_change),
                                  folder, recursive=False)
            except OSError:
                pass

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        with self._rewatch_cv:
            self._rewatch_cv.notify_all()
        if self._rewatcher is not None:
            self._rewatcher.join(timeout_s)       # before the observer: it may swap it
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout_s)
        if self._timer is not None:
            self._timer.join(timeout_s)

    # --- inotify queue overflows ---------------------------------------------------------
    def _overflowed(self, generation: int) -> None:
        """The kernel dropped events. MUST NOT block: runs on the inotify reader thread."""
        with self._rewatch_cv:
            if generation < self._generation:
                return                 # a replaced reader's last words
            self.overflows += 1
            self._overflows_pending += 1
            if self._overflow_due is None:
                self._overflow_due = max(time.monotonic() + _OVERFLOW_SETTLE_S,
                                         self._last_rewatch + _OVERFLOW_GAPS_S[self._gap])
                self._rewatch_cv.notify_all()

    def _rewatch_loop(self) -> None:
        while True:
            with self._rewatch_cv:
                while not self._stop.is_set():
                    due = self._overflow_due
                    if due is not None and time.monotonic() >= due:
                        break
                    self._rewatch_cv.wait(None if due is None else due - time.monotonic())
                if self._stop.is_set():
                    return
                self._overflow_due = None
                seen, self._overflows_pending = self._overflows_pending, 0
            try:
                self._rewatch(seen)
            except Exception as exc:   # never let the rewatch thread die
                self.errors.append(f"watch rewatch: {type(exc).__name__}: {exc}")

    def _rewatch(self, seen: int) -> None:
        """A fresh observer in place of the overflowed one (its watches first, so nothing
        falls between), then a re-mark of every folder and a sweep."""
        now = time.monotonic()
        with self._rewatch_cv:
            recent = now - self._last_rewatch < _OVERFLOW_CALM_S
            self._gap = min(self._gap + 1, len(_OVERFLOW_GAPS_S) - 1) if recent else 0
            self._last_rewatch = now
            generation = self._generation + 1
        try:
            observer, watching, errors = self._start_observer(generation)
        except Exception as exc:   # out of watches or instances: keep the old one, sweep
            log.warning("inotify queue overflowed %d time(s): events were lost; the "
                        "watches could not be replaced: %s", seen, exc)
            observer = None
            with self._rewatch_cv:   # and try again after the gap
                if self._overflow_due is None:
                    self._overflow_due = now + _OVERFLOW_GAPS_S[self._gap]
        if observer is not None:
            with self._rewatch_cv:
                old, self._observer = self._observer, observer
                self._generation = generation
                self.watching = watching
            self.errors += [e for e in errors if e not in self.errors]
            if old is not None:
                old.stop()
                old.join(2.0)
            if self._stop.is_set():        # stop() timed out waiting and missed this one
                observer.stop()
                return
            self.rewatches += 1
            log.warning("inotify queue overflowed %d time(s): events were lost; watching %d "
                        "folder(s) afresh", seen, len(watching))
        calls: list[tuple[Callable[..., None] | None, tuple[str, ...]]] = [
            (self.on_new_folder, (os.fspath(f.path),)) for f in self.watching]
        calls += [(self.on_control_change, ()), (self.on_overflow, ())]
        for callback, args in calls:
            if callback is None:
                continue
            try:
                callback(*args)
            except Exception as exc:   # one failing callback must not cost the sweep
                self.errors.append(f"watch overflow: {type(exc).__name__}: {exc}")

    # --- classification ------------------------------------------------------------------
    def offer(self, path: str, folder: WatchFolder, why: Trigger) -> None:
        name = os.path.basename(path)
        if is_partial(name) or self.excluded(path):
            return
        with self._cv:
            self._settling.pop(path, None)
        self.on_ready(Path(path), folder, why)

    def settle(self, path: str, folder: WatchFolder) -> None:
        """Hand *path* over once its size and mtime hold still for settle_s."""
        if is_partial(os.path.basename(path)) or self.excluded(path):
            return
        with self._cv:
            self._settling[path] = (-1, -1)
            heapq.heappush(self._heap, (time.monotonic() + self.settle_s, path, folder))
            self._cv.notify()

    def _settle_loop(self) -> None:
        while not self._stop.is_set():
            with self._cv:
                while not self._heap and not self._stop.is_set():
                    self._cv.wait()          # settle() and stop() notify
                if self._stop.is_set():
                    return
                due, path, folder = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cv.wait(min(wait, 1.0))
                    continue
                heapq.heappop(self._heap)
                if path not in self._settling:
                    continue       # a close or move event already handed it over
                last = self._settling[path]
            try:
                st = os.stat(path, follow_symlinks=False)
            except OSError:
                with self._cv:
                    self._settling.pop(path, None)
                continue
            if not stat.S_ISREG(st.st_mode):
                with self._cv:
                    self._settling.pop(path, None)
                continue
            now = (st.st_size, st.st_mtime_ns)
            with self._cv:
                if now != last:       # still changing: look again after settle_s
                    self._settling[path] = now
                    heapq.heappush(self._heap, (time.monotonic() + self.settle_s, path, folder))
                    continue
                self._settling.pop(path, None)
            self.on_ready(Path(path), folder, Trigger.SETTLED)

    # --- sweeps --------------------------------------------------------------------------
    def sweep(self, why: Trigger = Trigger.SWEEP) -> int:
        """Offer every file in every watched folder; returns how many were offered."""
        return sum(self.sweep_folder(Path(f.path), f, why) for f in self.folders)

    def sweep_folder(self, top: Path, folder: WatchFolder, why: Trigger) -> int:
        count = 0
        for path in iter_files(top, self.excluded):
            if not is_partial(os.path.basename(path)):
                self.on_ready(Path(path), folder, why)
                count += 1
        return count


def iter_files(top: Path, excluded: Callable[[str], bool] = lambda p: False) -> Iterator[str]:
    """Regular files below *top*; links are never followed, unreadable folders skipped."""
    stack = [os.fspath(top)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError:
            continue
        for entry in entries:
            if excluded(entry.path):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    yield entry.path
            except OSError:
                continue
