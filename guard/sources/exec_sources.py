"""Where launches come from: fanotify permission events (Linux with privileges: a launch
waits for the answer) or the portable monitor (psutil polling: a launch is seen after it
started). A source only emits events to its handler; what to answer is decided elsewhere.

``open_exec_source`` picks the backend the configuration asks for, falling back from
fanotify to the portable monitor with the reason, the way watchdog falls back from
inotify to polling.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol

from ..events import Launch
from . import fanotify
from .procpoll import ProcessMonitor


class ExecHandler(Protocol):
    """What a source calls. fanotify: ``quick`` on the reader thread (None: not cheap),
    ``decide`` on the decision pool under the deadline, ``report`` after the answer went
    out. The portable monitor: ``on_launch`` for each new process in scope."""

    def quick(self, ev: fanotify.PermEvent) -> fanotify.Answer | None: ...
    def decide(self, ev: fanotify.PermEvent) -> fanotify.Answer: ...
    def report(self, ev: fanotify.PermEvent, ans: fanotify.Answer, latency_s: float
               ) -> None: ...
    def on_launch(self, launch: Launch) -> None: ...


class FanotifySource:
    """Permission events on the watched folders, each folder below them, and mounts made
    under them (later ones too). Marks never land outside the folders (``confine``)."""

    backend = "fanotify"

    def __init__(self, roots: tuple[str, ...], exclude: Callable[[str], bool],
                 deadline_s: float, fail_closed: bool):
        self.on_error: Callable[[str], None] | None = None   # told of each failure
        self.roots = roots
        self.exclude = exclude
        self.deadline_s = deadline_s
        self.fail_closed = fail_closed
        self._fan: fanotify.FanotifyGuard | None = None
        self._mounts: fanotify.MountWatch | None = None

    def start(self, handler: ExecHandler) -> None:
        fan = fanotify.FanotifyGuard(handler.quick, handler.decide, handler.report,
                                     self.deadline_s, self.fail_closed)
        fan.confine = self.roots              # no mark ever lands outside them
        fan.on_error = self.on_error
        mounts = fanotify.mount_points()
        for root in self.roots:
            fan.mark_tree(root, self.exclude, mounts)
        # A mount made under a watched folder later (a USB stick, a tmpfs) is not under
        # the folder marks: the mount watch gives it a mount mark. It starts watching
        # before the first pass, so no mount falls in between.
        self._mounts = fanotify.MountWatch(self._mounts_changed)
        fan.mark_mounts(self.roots)
        self._fan = fan
        fan.start()
        self._mounts.start()

    def stop(self) -> None:
        if self._mounts is not None:
            self._mounts.stop()
            self._mounts = None
        if self._fan is not None:
            self._fan.close()          # the kernel allows anything still pending
            self._fan = None

    def _mounts_changed(self) -> None:
        fan = self._fan
        if fan is not None:
            fan.mark_mounts(self.roots)

    def mark_folder(self, folder: str) -> None:
        """A new folder appeared under a watched one: put it under launch control too."""
        fan = self._fan
        if fan is not None:
            fan.mark_tree(folder, self.exclude)

    def guard_file(self, path: str) -> bool:
        """Keep this file under launch control wherever it is moved (an inode mark)."""
        fan = self._fan
        return fan.mark_file(path) if fan is not None else False

    def status(self) -> dict[str, Any]:
        fan = self._fan
        if fan is None:
            return {}
        return {"fanotify": dict(fan.stats), "marked_folders": len(fan.marked),
                "marked_mounts": len(fan.marked_mounts), "guarded_files": len(fan.marked_files)}


class MonitorSource:
    """psutil polling every *poll_s*: new processes whose program or script lives under
    the watched folders (or is a guarded file, wherever it was moved)."""

    backend = "monitor"
    _GUARDED_MAX = 10_000

    def __init__(self, roots: tuple[str, ...], poll_s: float):
        self.on_error: Callable[[str], None] | None = None   # told of each failed poll
        self.roots = roots
        self.poll_s = poll_s
        self._mon: ProcessMonitor | None = None

    def start(self, handler: ExecHandler) -> None:
        self._mon = ProcessMonitor(self.roots, handler.on_launch, self.poll_s)
        self._mon.on_error = self.on_error
        self._mon.start()

    def stop(self) -> None:
        if self._mon is not None:
            self._mon.stop()
            self._mon = None

    def mark_folder(self, folder: str) -> None:
        """Nothing to do: the monitor compares paths with the roots at every poll."""

    def guard_file(self, path: str) -> bool:
        mon = self._mon
        if mon is None or len(mon.guarded) >= self._GUARDED_MAX:
            return False
        return mon.guard(path)

    def status(self) -> dict[str, Any]:
        mon = self._mon
        return {"guarded_files": len(mon.guarded), "poll_errors": mon.errors} if mon else {}


ExecSource = FanotifySource | MonitorSource


def open_exec_source(requested: str, roots: Iterable[str], *, exclude: Callable[[str], bool],
                     deadline_s: float, fail_closed: bool, poll_s: float
                     ) -> tuple[ExecSource | None, str]:
    """(the source, why) for ``launch_control`` = auto | fanotify | monitor | off. None
    when launch control is off or there is no folder to control."""
    roots = tuple(roots)
    if requested == "off" or not roots:
        return None, "launch control is off" if requested == "off" else "no folder to control"
    why = ""
    if requested in ("auto", "fanotify"):
        ok, why = fanotify.available()
        if ok:
            return FanotifySource(roots, exclude, deadline_s, fail_closed), why
        why = (f"fanotify unavailable ({why}); using the portable monitor"
               if requested == "fanotify" else f"fanotify unavailable ({why})")
    return MonitorSource(roots, poll_s), why
