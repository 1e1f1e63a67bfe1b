"""The file pipeline: a file that is ready is queued, scanned, decided, maybe quarantined,
recorded and told, by a pool of worker threads.

    offer() -> bounded queue -> workers: scan -> decide -> quarantine -> record -> notify

What it needs is passed in (``PipelineParts``): the scanner, the vault, the audit sink,
the mode and meeting providers, the notifier, launch control's memory of verdicts and its
hook for files that stay in place. It never calls back into the daemon, so it can be built
and driven in one process by a test.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..actions.notify import quarantine_message
from ..actions.quarantine import Vault
from ..audit.record import scan_record
from ..config import Config, WatchFolder
from ..errors import FileChanged, QuarantineError
from ..events import FileEvent
from ..policy.engine import decide
from ..verdict import Action, Failure, FileIdentity, Level, Mode, Problem, Trigger, Verdict
from .health import AuditSink, Counters, Problems
from .memory import release_memory
from .verdicts import ScannedFiles, VerdictMemory

RESCANS_MAX = 3            # a file that keeps changing under us is given up after this
_IDLE_TRIM_S = 10.0        # a worker idle this long after work gives freed heap back


@dataclass
class PipelineParts:
    """Everything the pipeline uses, built by the daemon (or a test)."""

    scanner: Any                              # .scan_file(path, follow=False) -> Verdict
    vault: Vault
    audit: AuditSink
    problems: Problems
    counters: Counters
    mode: Callable[[], Mode]                  # the effective mode (break-glass applied)
    meeting: Callable[[], bool]               # a call is on (or lingering)
    notifier: Any                             # .notify(title, body, **extra)
    verdicts: VerdictMemory
    keep_guarded: Callable[[str], Any] = lambda path: None   # malicious, left in place
    request_sweep: Callable[[], None] = lambda: None
    poke: Callable[[], None] = lambda: None   # something changed: status.json soon


class FilePipeline:
    """Owns the queue and the worker threads. ``offer`` never blocks a watcher thread."""

    def __init__(self, config: Config, parts: PipelineParts):
        self.config = config
        self.parts = parts
        self.queue: queue.Queue[FileEvent | None] = queue.Queue(config.queue_size)
        self.seen = ScannedFiles()
        self.overflowed = False        # the watcher dropped files on a full queue
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        for _ in range(self.config.workers):
            t = threading.Thread(target=self._work, name="guard-worker", daemon=True)
            t.start()
            self._workers.append(t)

    def stop(self, drain_s: float) -> None:
        """Finish queued work for *drain_s* at most, then end the workers."""
        self._stop.set()
        deadline = time.monotonic() + drain_s
        while not self.queue.empty() and time.monotonic() < deadline:
            time.sleep(0.05)
        for _ in self._workers:
            try:
                self.queue.put_nowait(None)
            except queue.Full:
                break
        for t in self._workers:
            t.join(max(0.0, deadline - time.monotonic()) + 0.5)

    @property
    def alive(self) -> bool:
        return all(t.is_alive() for t in self._workers)

    @property
    def depth(self) -> int:
        return self.queue.qsize()

    def forget(self) -> None:
        """New rules or configuration: every file deserves a new look."""
        self.seen.clear()

    # --- intake --------------------------------------------------------------------------
    def offer(self, path: Path, folder: WatchFolder, trigger: Trigger) -> None:
        """Queue a file unless it is queued already or unchanged since its last scan.

        Watcher threads never block: on a full queue the file is dropped and a sweep is
        scheduled for when the queue has drained. Sweeps (the housekeeper's thread) wait
        for room instead, so a sweep can never cause another sweep.
        """
        key = os.fspath(path)
        if trigger is Trigger.SWEEP:
            try:
                st = os.lstat(path)
            except OSError:
                return
            if self.seen.unchanged(key, FileIdentity.of(st)):
                self.parts.counters.bump("skipped_unchanged")
                return
        with self._lock:
            if key in self._pending:
                return
            self._pending.add(key)
        event = FileEvent(path, folder, trigger)
        if trigger is Trigger.SWEEP:
            while not self._stop.is_set():
                try:
                    self.queue.put(event, timeout=0.5)
                    self.parts.counters.bump("queued")
                    return
                except queue.Full:
                    continue
        else:
            try:
                self.queue.put_nowait(event)
                self.parts.counters.bump("queued")
                return
            except queue.Full:
                self.parts.counters.bump("dropped")
                self.overflowed = True
        with self._lock:
            self._pending.discard(key)

    def _requeue(self, event: FileEvent) -> None:
        try:
            self.queue.put_nowait(FileEvent(event.path, event.folder, Trigger.RESCAN,
                                            event.attempt + 1))
        except queue.Full:
            self.parts.request_sweep()

    # --- work ----------------------------------------------------------------------------
    def _work(self) -> None:
        worked = False
        while True:
            try:
                event = self.queue.get(timeout=_IDLE_TRIM_S)
            except queue.Empty:
                if worked:                    # idle after work: give freed heap back
                    worked = False
                    release_memory()
                continue
            worked = True
            if event is None:
                return
            with self._lock:
                self._pending.discard(os.fspath(event.path))
            try:
                self.handle(event)
            except Exception as exc:  # noqa: BLE001 - the agent never dies on one bad file
                self.parts.problems.report(Problem.SCAN, f"{event.path}: "
                                           f"{type(exc).__name__}: {exc}")
            self.parts.poke()           # status.json shows it within a second

    def handle(self, event: FileEvent) -> None:
        """Judge one file and act on it. Public so that a test can drive the pipeline."""
        parts, config = self.parts, self.config
        key = os.fspath(event.path)
        try:
            st = os.lstat(event.path)
        except OSError:
            return                                   # gone before we got to it
        if not (st.st_mode & 0o170000 == 0o100000):
            return                                   # links, fifos, folders: not ours
        identity = FileIdentity.of(st)
        if self.seen.unchanged(key, identity):
            parts.counters.bump("skipped_unchanged")
            return
        verdict = parts.scanner.scan_file(event.path, follow=False)
        parts.counters.bump("scanned")
        if verdict.failure is Failure.CHANGED and event.attempt < RESCANS_MAX:
            self._requeue(event)
            return
        parts.counters.bump(verdict.level.value)
        meeting = parts.meeting()
        decision = decide(verdict, parts.mode(), meeting, config.quarantine_suspicious)
        # Read the download metadata only for files that get a record (before a move).
        logged = verdict.flagged or decision.intended is not Action.ALLOW or config.log_clean
        provenance = self._provenance(event.path) if logged else {}
        qid, error, moved_ms = "", "", None
        if decision.action is Action.QUARANTINE:
            moving = time.monotonic()
            try:
                qid = self._quarantine(event, verdict, decision, provenance)
                moved_ms = (time.monotonic() - moving) * 1000
            except FileChanged:
                if event.attempt < RESCANS_MAX:
                    self._requeue(event)
                    return
                error = "the file kept changing; not quarantined"
            except (QuarantineError, OSError) as exc:
                error = f"quarantine failed: {exc}"
                parts.counters.bump("failed")
        parts.verdicts.remember(verdict)
        if verdict.level is Level.MALICIOUS and not qid:
            parts.keep_guarded(key)             # left in place: still no launch
        self.seen.scanned(key, None if verdict.error else identity)
        if logged or error:
            parts.audit(scan_record(decision, event.folder.source, provenance, qid,
                                    error=error, trigger=event.trigger,
                                    quarantine_ms=moved_ms))
        if qid:
            parts.counters.bump("quarantined")
            title, body = quarantine_message(event.path.name, verdict.summary, meeting)
            parts.notifier.notify(title, body, path=key, quarantine_id=qid)

    def _quarantine(self, event: FileEvent, verdict: Verdict, decision, provenance
                    ) -> str:
        meta = {"verdict": verdict.level.value,
                "reasons": [r.to_dict() for r in verdict.reasons],
                "rules": list(verdict.rules), "summary": verdict.summary,
                "source": event.folder.source, "provenance": provenance,
                "meeting": decision.meeting, "type": verdict.type.to_dict()}
        if verdict.identity is None:
            raise FileChanged("no identity from the scan", path=str(event.path))
        item = self.parts.vault.quarantine(Path(event.folder.path), event.path,
                                           verdict.identity, verdict.sha256, meta)
        return item.id

    def _provenance(self, path: Path) -> dict[str, Any]:
        try:
            from ..sources.provenance import read_provenance
            return read_provenance(path).to_dict()
        except Exception as exc:  # noqa: BLE001 - metadata is a bonus, never the verdict
            self.parts.problems.report(Problem.PROVENANCE, f"{path}: download metadata "
                                       f"not read: {type(exc).__name__}: {exc}")
            return {}
