"""Watch folders with watchdog and hand over each file once it is complete.

A file is complete when the OS reports close-after-write (inotify IN_CLOSE_WRITE on
Linux), when it is renamed or moved into the folder (browsers rename a finished
`.crdownload`), or, where the OS reports neither, once its size and mtime have held still
for ``settle_s``. Partial-download names are ignored until renamed. Sweeps (``sweep``)
catch whatever the OS dropped, inotify queue overflows included.

MUST NOT scan or block: handlers only classify events and call ``on_ready``.
"""

from __future__ import annotations

import fnmatch
import heapq
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

OnReady = Callable[[Path, WatchFolder, str], None]   # path, folder, why ("closed", ...)
_INTERNAL_PREFIX = ".guard-"                          # the vault's own aside names


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
                w.offer(os.fsdecode(event.src_path), self.folder, "closed")
            elif isinstance(event, FileMovedEvent):
                w.offer(os.fsdecode(event.dest_path), self.folder, "moved")
            elif isinstance(event, (FileCreatedEvent, FileModifiedEvent)):
                w.settle(os.fsdecode(event.src_path), self.folder)
            elif isinstance(event, (DirCreatedEvent, DirMovedEvent)):
                # files written before the new folder's watch existed get no events
                target = event.dest_path if isinstance(event, DirMovedEvent) else event.src_path
                if w.on_new_folder is not None:
                    w.on_new_folder(os.fsdecode(target))
                w.sweep_folder(Path(os.fsdecode(target)), self.folder, "new-folder")
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


class FolderWatcher:
    """Owns one watchdog Observer and a settle timer thread."""

    def __init__(self, folders: Iterable[WatchFolder], on_ready: OnReady,
                 exclude: Iterable[str] = (), settle_s: float = 0.5,
                 on_new_folder: Callable[[str], None] | None = None,
                 control_files: Iterable[str | os.PathLike[str]] = (),
                 on_control_change: Callable[[], None] | None = None):
        self.folders = tuple(folders)
        self.control_files = tuple(Path(p) for p in control_files)
        self.on_control_change = on_control_change
        self.on_new_folder = on_new_folder
        self.on_ready = on_ready
        self.excluded = Excluder(exclude)
        self.settle_s = settle_s
        self.errors: list[str] = []
        self.watching: list[WatchFolder] = []
        self._observer: Observer | None = None
        self._heap: list[tuple[float, str, WatchFolder]] = []
        self._settling: dict[str, tuple[int, int]] = {}
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None

    def start(self) -> None:
        # watchdog warns, with its whole watch table, each time a new subfolder is added
        # under a recursive watch; it is expected here and says nothing useful.
        warnings.filterwarnings("ignore", message=".*already exists.*", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=".*already exists.*", category=UserWarning)
        self._observer = Observer()
        self._observer.daemon = True
        for folder in self.folders:
            if not Path(folder.path).is_dir():
                self.errors.append(f"{folder.path}: not a folder; not watched")
                continue
            try:
                self._observer.schedule(_Handler(self, folder), os.fspath(folder.path),
                                        recursive=True,
                                        event_filter=[FileClosedEvent, FileMovedEvent,
                                                      FileCreatedEvent, FileModifiedEvent,
                                                      DirCreatedEvent, DirMovedEvent])
                self.watching.append(folder)
            except OSError as exc:
                self.errors.append(f"{folder.path}: cannot watch: {exc.strerror or exc}")
        self._watch_control_files()
        self._observer.start()
        self._timer = threading.Thread(target=self._settle_loop, name="guard-settle",
                                       daemon=True)
        self._timer.start()

    def _watch_control_files(self) -> None:
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
                self._observer.schedule(_FileChangeHandler(names, self.on_control_change),
                                        folder, recursive=False)
            except OSError:
                pass

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout_s)
        if self._timer is not None:
            self._timer.join(timeout_s)

    # --- classification ------------------------------------------------------------------
    def offer(self, path: str, folder: WatchFolder, why: str) -> None:
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
            self.on_ready(Path(path), folder, "settled")

    # --- sweeps --------------------------------------------------------------------------
    def sweep(self, why: str = "sweep") -> int:
        """Offer every file in every watched folder; returns how many were offered."""
        return sum(self.sweep_folder(Path(f.path), f, why) for f in self.folders)

    def sweep_folder(self, top: Path, folder: WatchFolder, why: str) -> int:
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
