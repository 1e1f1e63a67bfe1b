"""The housekeeper thread: sweeps, allowlist and break-glass changes, status.json, the
service watchdog, idle parser workers.

At most one round a second while anything happens; when idle it sleeps until a poke (a
handled file, a sweep request, a change to the allowlist's or the break-glass file's
folder) or the heartbeat: every wake-up of an idle agent costs CPU.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ..audit.record import admin_record
from ..platform import systemd
from ..verdict import FlushReason, Problem
from .status import StatusFile

HEARTBEAT_S = 10.0         # status.json is rewritten at least this often
STALL_S = 120.0            # queued files and none scanned this long: the pipeline is hung
_OVERFLOW_SWEEP_GAP_S = 2.0


class Housekeeper:
    def __init__(self, parts: Any, status: StatusFile):
        self.parts = parts
        self.status = status
        self.sweep_now = threading.Event()
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watchdog_s = systemd.watchdog_interval_s()
        self._progress = (0, time.monotonic())    # (scanned, when it last moved)
        self._stall_reported = False
        self._allowlist_error = ""
        self._break_glass_seen = False

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """The first round is the start sweep: files that arrived while the agent was off."""
        self._thread = threading.Thread(target=self._run, name="guard-sweep", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(1.0)          # so it cannot write "running" after "stopped"

    def request_sweep(self) -> None:
        self.sweep_now.set()
        self.wake.set()

    def poke(self) -> None:
        self.wake.set()

    # --- the loop --------------------------------------------------------------------------
    def _run(self) -> None:
        parts = self.parts
        next_sweep = time.monotonic()
        last_sweep = 0.0
        failing: dict[str, str] = {}       # step -> its last failure, reported once
        while not self._stop.is_set():
            started = now = time.monotonic()
            pipeline = parts.pipeline
            drained = pipeline.depth < parts.config.queue_size // 2
            overflow_due = pipeline.overflowed and drained and \
                now - last_sweep >= _OVERFLOW_SWEEP_GAP_S
            if self.sweep_now.is_set() or now >= next_sweep or overflow_due:
                self.sweep_now.clear()
                pipeline.overflowed = False
                try:
                    parts.watcher.sweep()
                    parts.counters.bump("sweeps")
                except Exception as exc:  # noqa: BLE001 - reported; the next sweep retries
                    parts.problems.report(Problem.HOUSEKEEPING, f"sweep failed: "
                                          f"{type(exc).__name__}: {exc}")
                last_sweep = time.monotonic()
                next_sweep = last_sweep + parts.config.sweep_interval_s
            self.wake.clear()
            busy = False
            for step in (self.check_allowlist, self.check_break_glass, self._write_status,
                         self._feed_watchdog, self._reap_parsers):
                name = step.__name__.lstrip("_")
                try:
                    busy = bool(step()) or busy
                    failing.pop(name, None)
                except Exception as exc:  # noqa: BLE001 - see below
                    # One broken step must not end the thread: every later round of
                    # every other step (sweeps, status, the service watchdog) would stop.
                    # Reported once per distinct failure, not once a second.
                    text = f"housekeeping: {name} failed: {type(exc).__name__}: {exc}"
                    if failing.get(name) != text:
                        failing[name] = text
                        parts.problems.report(Problem.HOUSEKEEPING, text)
            busy = busy or pipeline.depth > 0 or pipeline.overflowed
            idle_s = min(HEARTBEAT_S, self._watchdog_s or HEARTBEAT_S,
                         max(0.0, next_sweep - time.monotonic()))
            self.wake.wait(1.0 if busy else idle_s)
            rest = 1.0 - (time.monotonic() - started)
            if rest > 0 and not self.sweep_now.is_set():
                self._stop.wait(rest)          # a burst of pokes: still one round a second

    # --- steps -------------------------------------------------------------------------------
    def _write_status(self) -> bool:
        return self.status.maybe_write(HEARTBEAT_S)

    def _reap_parsers(self) -> None:
        """Parser workers idle for parser_idle_s exit: an idle agent holds no parser memory."""
        reap = getattr(self.parts.scanner, "reap_idle", None)
        if reap is not None:
            reap()

    def _feed_watchdog(self) -> None:
        """WATCHDOG=1 to systemd while the pipeline works: every worker thread alive, and
        files queued are being scanned. A hung agent stops feeding and is restarted."""
        if self._watchdog_s is None:
            return
        parts = self.parts
        now = time.monotonic()
        scanned = parts.counters.scanned
        if scanned != self._progress[0] or parts.pipeline.depth == 0:
            self._progress = (scanned, now)
        stalled_s = now - self._progress[1]
        alive = parts.pipeline.alive
        if alive and stalled_s < STALL_S:
            systemd.notify("WATCHDOG=1")
        elif not self._stall_reported:
            self._stall_reported = True
            parts.problems.report(Problem.STALL, "pipeline stalled: " + (
                "a worker thread died" if not alive else
                f"no file scanned for {stalled_s:.0f} s with {parts.pipeline.depth} "
                "queued") + "; not feeding the service watchdog")

    def check_allowlist(self) -> None:
        """Hot reload: a good edit applies at once; a bad one is refused and logged with
        file and line, and the last good list stays in force."""
        parts = self.parts
        store = parts.allowlist
        changed, error = store.reload()
        if error is not None:
            text = str(error)
            if text != self._allowlist_error:
                self._allowlist_error = text
                parts.problems.report(Problem.ALLOWLIST, f"allowlist refused, last good "
                                      f"list kept: {text}")
                parts.audit(admin_record("allowlist-reload", outcome="failure", message=text))
            return
        recovered = bool(self._allowlist_error) and store.error is None
        if recovered:
            # The file is good again; maybe the very list in force (a bad edit undone),
            # which is no change and must still clear the error.
            parts.problems.clear_last(f"allowlist refused, last good list kept: "
                                      f"{self._allowlist_error}")
            self._allowlist_error = ""
        if changed:
            parts.launch.flush(FlushReason.ALLOWLIST_CHANGED)
        if changed or recovered:
            cur = store.current
            parts.audit(admin_record("allowlist-reload", message=f"allowlist loaded: "
                                     f"{len(cur.entries)} entries", entries=len(cur.entries),
                                     fingerprint=getattr(cur, "fingerprint", "")))

    def check_break_glass(self) -> None:
        parts = self.parts
        on = parts.mode.break_glass_on()
        if on != self._break_glass_seen:
            self._break_glass_seen = on
            parts.launch.flush(FlushReason.MODE_CHANGED)   # answers differ from now on
            parts.audit(admin_record("break-glass", outcome="success", message=(
                "break-glass file present: monitor mode in force" if on else
                "break-glass file removed: configured mode restored"),
                file=str(parts.config.break_glass_file), mode=parts.mode.effective().value))
            self.status.write("running")

    # --- what the environment reports --------------------------------------------------
    def meeting_changed(self, active: bool, app: str) -> None:
        """A call app started, or its linger after the call ended."""
        self.parts.audit(admin_record(
            "meeting-started" if active else "meeting-ended",
            message=f"call app {app!r} {'running' if active else 'gone'}",
            meeting=active, app=app))
        self.status.write("running")

    def watch_overflowed(self) -> None:
        """The kernel's event queue overflowed (a burst of files): events were lost, the
        watcher watches every folder afresh, and a sweep gives each file its verdict."""
        self.parts.counters.bump("watch_overflows")
        self.parts.audit(admin_record("watch-overflow", outcome="failure", message=(
            "the file event queue overflowed, so events were lost: every watched folder "
            "is watched afresh and swept")))
        self.request_sweep()

    def forget_allowlist_error(self) -> None:
        """A new allowlist store (reload): its first error is reported afresh."""
        self._allowlist_error = ""

