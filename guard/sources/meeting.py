"""Is a video call on? psutil over process names, polled, with a linger after the call.

Meeting-aware strictness: while a call app runs, and for ``linger_s`` after, files that
arrive get the strict policy. Only process *names* are read; nothing is touched.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable, Iterable

import psutil


def _norm(name: str) -> str:
    name = name.lower()
    for suffix in (".exe", ".app"):
        name = name.removesuffix(suffix)
    return name


def _newest_pid() -> str | None:
    """The PID the kernel allocated last (the 5th field of /proc/loadavg): unchanged means
    no process was created in between."""
    try:
        with open("/proc/loadavg", "rb") as fh:
            return fh.read(128).split()[4].decode()
    except (OSError, IndexError):
        return None


class MeetingMonitor:
    def __init__(self, apps: Iterable[str], linger_s: float = 900.0, poll_s: float = 2.0,
                 on_change: Callable[[bool, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_error: Callable[[str], None] | None = None):
        self.apps = frozenset(_norm(a) for a in apps)
        self.linger_s = linger_s
        self.poll_s = poll_s
        self.on_change = on_change
        self.clock = clock
        self.on_error = on_error       # told why a poll failed (the next one retries)
        self.app = ""                  # the call app seen last
        self._running = False
        self._reported = False         # the state last announced through on_change
        self._ended_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._names: dict[str, str] = {}     # /proc PID -> its process name (Linux)
        self._fresh: set[str] = set()        # PIDs first seen on the last poll
        self._newest: str | None = None      # the last PID the kernel handed out, then

    def find_call_app(self) -> str:
        if os.path.isdir("/proc/self"):
            return self._find_in_proc()
        for proc in psutil.process_iter(["name"]):
            try:
                name = _norm(proc.info.get("name") or "")
            except (psutil.Error, AttributeError):
                continue
            if name in self.apps:
                return name
        return ""

    def _find_in_proc(self) -> str:
        """Linux: /proc/PID/comm directly, and only for processes not settled yet.

        A process's name is read when its PID first shows up and once more on the next
        poll (a fork shows the parent's name until its exec), then it is settled: an idle
        poll (no process created since the last) reads /proc/loadavg and nothing else.
        """
        known = self._names
        newest = _newest_pid()
        if newest is not None and newest == self._newest and not self._fresh:
            # No process was created since the last look: only see whether the call
            # apps found before still run. An idle poll reads one small file.
            for pid in [p for p, name in known.items() if name in self.apps]:
                if not os.path.exists(f"/proc/{pid}"):
                    del known[pid]
            return next((name for name in known.values() if name in self.apps), "")
        self._newest = newest
        pids = {e.name for e in os.scandir("/proc") if e.name.isdigit()}
        for gone in known.keys() - pids:
            del known[gone]
        unsettled = (pids - known.keys()) | self._fresh
        self._fresh = pids - known.keys()
        for pid in unsettled:
            try:
                with open(f"/proc/{pid}/comm", "rb") as fh:
                    known[pid] = _norm(fh.read(64).decode("utf-8", "replace").strip())
            except OSError:
                known.pop(pid, None)
                self._fresh.discard(pid)
        return next((name for name in known.values() if name in self.apps), "")

    def poll(self) -> bool:
        """Look once; returns whether the strict policy applies now."""
        app = self.find_call_app()
        was = self._reported
        if app:
            self._running, self.app, self._ended_at = True, app, None
        elif self._running:
            self._running, self._ended_at = False, self.clock()
        now_active = self.active
        if now_active != was:
            self._reported = now_active
            if self.on_change is not None:
                self.on_change(now_active, self.app)
        return now_active

    @property
    def active(self) -> bool:
        if self._running:
            return True
        return self._ended_at is not None and self.clock() - self._ended_at < self.linger_s

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="guard-meeting", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - must not stop the monitor; reported
                if self.on_error is not None:
                    self.on_error(f"call-app poll failed: {type(exc).__name__}: {exc}")
            self._stop.wait(self.poll_s)
