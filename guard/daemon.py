"""The agent: wiring only. Builds every part from Config, starts, reloads, stops.

Flow: watch (events, sweeps) -> bounded queue -> workers: scan -> decide -> quarantine ->
audit -> notify. The main thread only waits for signals: SIGHUP reloads config and
rules (the last good ones stay on error), SIGUSR1 runs a reconciliation sweep now,
SIGTERM/SIGINT drain and exit within 5 s.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import signal
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .actions.notify import Notifier, quarantine_message
from .actions.quarantine import Vault
from .audit.record import admin_record, scan_record
from .config import Config, WatchFolder, load_config
from .errors import ConfigError, FileChanged, GuardError, LockedError, QuarantineError
from .identify.containers import Limits
from .platform import systemd
from .policy.engine import decide
from .sandbox import Budget, IsolatedScanner
from .scanner import ScanOptions, Scanner, load_rules
from .sources.meeting import MeetingMonitor
from .sources.watch import FolderWatcher
from .verdict import Action, Failure, FailMode, FileIdentity, Level, Mode, Trigger

DRAIN_S = 4.0              # SIGTERM: finish queued work for this long, then leave
_HEARTBEAT_S = 10.0        # status.json is rewritten at least this often
_STALL_S = 120.0           # queued files and none scanned this long: the pipeline is hung
_VERDICTS_MAX = 1024       # recent verdicts by file identity, for launch decisions
_LAUNCH_SCAN_MAX = 64 * 1024 * 1024   # a launch of a larger unscanned file is not scanned
_SEEN_MAX = 200_000        # identities remembered so an unchanged file is not rescanned
_PARSER_START_S = 30.0     # start-up waits this long at most for the first parser worker
_RESCANS_MAX = 3           # a file that keeps changing under us is given up after this


@dataclass
class Counters:
    queued: int = 0
    scanned: int = 0
    clean: int = 0
    suspicious: int = 0
    malicious: int = 0
    quarantined: int = 0
    failed: int = 0
    skipped_unchanged: int = 0
    dropped: int = 0
    sweeps: int = 0
    errors: int = 0
    watch_overflows: int = 0       # inotify queue overflows: folders watched afresh, swept

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def bump(self, name: str, by: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + by)

    def to_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


@dataclass(frozen=True)
class _Job:
    path: Path
    folder: WatchFolder
    why: str
    attempt: int = 0


class Daemon:
    def __init__(self, config: Config, config_path: str | None = None):
        self.config = config
        self.config_path = config_path
        self.counters = Counters()
        self.last_error = ""
        self.started_at = time.time()
        self._queue: queue.Queue[_Job | None] = queue.Queue(config.queue_size)
        self._pending: set[str] = set()
        self._pending_lock = threading.Lock()
        # hash(path) -> hash(file_identity) of its last scan, oldest first: two
        # machine words a file instead of a path and a tuple (RSS after a big burst)
        self._seen: dict[int, int] = {}
        # (dev, ino, sha256) -> flagged verdict summary, oldest first
        self._verdicts: dict[tuple[int, int, str], dict[str, Any]] = {}
        self._stop = threading.Event()
        self._sweep_now = threading.Event()
        self._wake = threading.Event()          # pokes the housekeeper
        self._status_lock = threading.Lock()
        self._watchdog_s = systemd.watchdog_interval_s()
        self._progress = (0, time.monotonic())  # (scanned, when it last moved)
        self._stall_reported = False
        self._overflowed = False           # the watcher dropped files on a full queue
        self._worked = False               # a job ran since the last heap trim
        self._housekeeper: threading.Thread | None = None
        self._status_written = 0.0
        self._status_last: tuple = ()
        self._reload = threading.Event()
        self._workers: list[threading.Thread] = []
        self._lock_fd: int | None = None
        self.acquire_lock()                  # before anything opens the log or the vault
        self.scanner = self._build_scanner(config)
        self.vault = Vault(config.quarantine_dir)
        from .audit.writer import open_for
        self.audit = open_for(config)
        self.forwarder = self._build_forwarder(config)
        self.notifier = Notifier(config.notify)
        self.meeting = MeetingMonitor(config.meeting_apps, config.meeting_linger_s,
                                      config.meeting_poll_s, on_change=self._meeting_changed)
        self.watcher = self._build_watcher(config)
        self.puller = self._build_puller(config)
        from .policy.allowlist import AllowlistStore
        self.allowlist = AllowlistStore(config.allowlist)
        self._allowlist_error = ""
        self._break_glass_seen = False
        self.launch = self._build_launch(config)

    # --- construction --------------------------------------------------------------------
    def _build_scanner(self, config: Config) -> Scanner:
        rules = load_rules(config.rules)
        self.rule_errors = [str(e) for e in rules.errors]
        options = ScanOptions(max_size_bytes=int(config.max_size_mb * 1024 * 1024),
                              yara_timeout_s=config.yara_timeout_s, limits=Limits())
        if not config.parser_isolation:
            return Scanner(rules, options)
        return IsolatedScanner(rules, options, Budget(
            cpu_s=config.parser_cpu_s, memory_mb=config.parser_memory_mb,
            wall_s=config.parser_wall_s, idle_s=config.parser_idle_s))

    def _build_watcher(self, config: Config) -> FolderWatcher:
        return FolderWatcher(config.watch, self._offer, config.exclude, config.settle_s,
                             on_new_folder=self._new_folder,
                             control_files=(config.allowlist, config.break_glass_file),
                             on_control_change=self._wake.set,
                             on_overflow=self._watch_overflowed)

    def _build_forwarder(self, config: Config):
        """Every audit record to the SIEM's syslog collector, when syslog_target is set.
        The log itself is the buffer: records written while the collector is down are
        sent when it is back (a cursor in state_dir remembers the last one delivered)."""
        if not config.syslog_target:
            return None
        from .audit.forward import SyslogForwarder
        return SyslogForwarder(config.log_file, config.syslog_target, config.state_dir,
                               fmt=config.syslog_format,
                               facility=int(config.syslog_facility)
                               if config.syslog_facility.isdigit() else config.syslog_facility,
                               tls_ca=config.syslog_tls_ca, tls_cert=config.syslog_tls_cert,
                               tls_key=config.syslog_tls_key,
                               tls_verify=config.syslog_tls_verify,
                               on_gap=self._forward_gap)

    def _forward_gap(self, first: int, last: int) -> None:
        self._log(admin_record("forward-gap", outcome="failure", message=(
            f"records {first}..{last} were rotated out of the audit log before the syslog "
            "collector got them"), first_seq=first, last_seq=last))

    def _build_puller(self, config: Config):
        """The signed-allowlist puller when allowlist_url is set; keys that do not load are
        a configuration error (the agent refuses to start; a reload keeps the old)."""
        if not config.allowlist_url:
            return None
        from .policy.distribution import AllowlistPuller, DistributionError, load_public_keys
        try:
            keys = load_public_keys([str(p) for p in config.allowlist_pubkeys])
        except DistributionError as exc:
            raise ConfigError(f"allowlist_pubkeys: {exc}", path=config.source) from None
        return AllowlistPuller(config.allowlist_url, keys, config.allowlist, config.state_dir,
                               interval_s=config.allowlist_pull_s,
                               ca_file=config.allowlist_ca_file, on_event=self._pull_event)

    def _pull_event(self, name: str, fields: dict[str, Any]) -> None:
        """A pull applied a new signed allowlist, or refused one: log it; apply at once."""
        fields = dict(fields)
        outcome = fields.pop("outcome", "success")
        message = fields.pop("message", "")
        self._log(admin_record(name, outcome=outcome, message=message, **fields))
        if outcome != "success":
            self._error(f"allowlist pull refused, last good list kept: {message}")
        self._wake.set()                      # the housekeeper reloads the new list now

    def _build_launch(self, config: Config):
        from .actions.launch import LaunchControl
        roots = [w.path for w in config.watch if Path(w.path).is_dir()] + \
            [p for p in config.launch_extra_paths if Path(p).is_dir()]
        return LaunchControl(
            roots=roots, allowlist=self.allowlist, mode=self.effective_mode,
            on_denied=self._launch_denied, on_event=self._launch_event,
            backend=config.launch_control, deadline_s=config.decision_timeout_s,
            fail_closed=config.fail_mode is FailMode.CLOSED, poll_s=config.process_poll_s,
            break_glass=self.break_glass_on, exclude=self.watcher.excluded,
            verdict_of=self._verdict_for_launch)

    def break_glass_on(self) -> bool:
        """The break-glass file is there, a regular file (not a link) owned by the agent's
        own user (root in a deployment): nobody else can switch enforcement off."""
        try:
            st = os.lstat(self.config.break_glass_file)
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()

    def effective_mode(self) -> str:
        """The configured mode, unless the break-glass file forces monitor mode."""
        return Mode.MONITOR if self.break_glass_on() else self.config.mode

    def _new_folder(self, folder: str) -> None:
        self.launch.mark_folder(folder)

    # --- lifecycle -----------------------------------------------------------------------
    def acquire_lock(self) -> None:
        """One instance per config: an exclusive lock on state_dir/guard.lock."""
        state = self.config.state_dir
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(state / "guard.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockedError("another guard is already running with this configuration",
                              path=str(state / "guard.lock")) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def start(self) -> None:
        if self.config.source == "<embedded default>":
            for w in self.config.watch:
                if w.source == "browser" and not Path(w.path).exists():
                    Path(w.path).mkdir(parents=True, exist_ok=True)
        _tune_malloc()
        recovered = self.vault.recover()
        self._log(admin_record("guard-started", message=f"guard {__version__} started",
                               mode=self.config.mode, config=self.config.source,
                               watched=[str(w.path) for w in self.config.watch],
                               recovered=[f"{i}:{o}" for i, o in recovered] or None,
                               rule_errors=self.rule_errors or None))
        if self.forwarder is not None:
            self.forwarder.start()
        prestart = getattr(self.scanner, "prestart", None)
        if prestart is not None:
            prestart()                    # the first file need not wait for a parser worker
        for _ in range(self.config.workers):
            t = threading.Thread(target=self._work, name="guard-worker", daemon=True)
            t.start()
            self._workers.append(t)
        self.watcher.start()
        for err in self.watcher.errors:
            self._error(err)
        self._check_allowlist()
        self.launch.start()
        self._log(admin_record("launch-control", message=f"launch control: "
                               f"{self.launch.backend}" + (f" ({self.launch.why})"
                                                          if self.launch.why else ""),
                               backend=self.launch.backend))
        self.meeting.poll()
        self.meeting.start()
        if self.puller is not None:
            self.puller.start()
        started = getattr(self.scanner, "wait_prestarted", None)
        if started is not None:
            # Before the housekeeper, whose status.json also says "running": running means
            # files are scanned at full speed.
            started(_PARSER_START_S)
        self._housekeeper = threading.Thread(target=self._housekeep, name="guard-sweep",
                                             daemon=True)
        self._housekeeper.start()
        # the housekeeper's first pass is the start sweep: files that arrived while we were off
        self.write_status("running")
        systemd.notify("READY=1", f"STATUS=watching {len(self.watcher.watching)} folders, "
                       f"launch control {self.launch.backend}")

    def run_forever(self) -> int:
        """Main-thread loop: signals set flags; returns the exit code."""
        woken = threading.Event()        # the main thread sleeps until a signal comes

        def on(flag: threading.Event):
            def handler(*_: object) -> None:
                flag.set()
                woken.set()
            return handler
        signal.signal(signal.SIGTERM, on(self._stop))
        signal.signal(signal.SIGINT, on(self._stop))
        signal.signal(signal.SIGHUP, on(self._reload))
        signal.signal(signal.SIGUSR1, lambda *_: self.request_sweep())   # "look again now"
        self.start()
        while not self._stop.is_set():
            woken.wait(60.0)
            woken.clear()
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
        self.stop()
        return 0

    def stop(self) -> None:
        systemd.notify("STOPPING=1")
        self.write_status("stopping")
        self.launch.stop()           # first: the kernel allows whatever is still pending
        self.watcher.stop()
        self.meeting.stop()
        if self.puller is not None:
            self.puller.stop()
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + DRAIN_S
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.05)
        for _ in self._workers:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                break
        for t in self._workers:
            t.join(max(0.0, deadline - time.monotonic()) + 0.5)
        if self._housekeeper is not None and self._housekeeper is not threading.current_thread():
            self._housekeeper.join(1.0)       # so it cannot write "running" after "stopped"
        self._log(admin_record("guard-stopped", message="guard stopped",
                               counters=self.counters.to_dict()))
        if self.forwarder is not None:
            self.forwarder.flush(2.0)           # what can go now goes; the rest at next start
            self.forwarder.stop()
        self.notifier.close(0.5)
        _close_scanner(self.scanner)
        self.audit.close()
        self.write_status("stopped")
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def reload(self) -> None:
        """SIGHUP: new config and rules, or keep the last good ones and log why."""
        systemd.notify("RELOADING=1")
        try:
            self._reload_config()
        finally:
            systemd.notify("READY=1")

    def _reload_config(self) -> None:
        try:
            config = load_config(self.config_path)
            scanner = self._build_scanner(config)
            puller = self._build_puller(config)
            forwarder = self._build_forwarder(config) if _forwarding(config) != \
                _forwarding(self.config) else self.forwarder
        except GuardError as exc:
            self._error(f"reload refused, previous configuration kept: {exc}")
            self._log(admin_record("config-reload", outcome="failure", message=str(exc)))
            return
        self.config = config
        old_scanner, self.scanner = self.scanner, scanner
        _close_scanner(old_scanner)           # its workers end once their scan is done
        if self.puller is not None:
            self.puller.stop()
        self.puller = puller
        if puller is not None:
            puller.start()
        if forwarder is not self.forwarder:
            if self.forwarder is not None:
                self.forwarder.stop()
            self.forwarder = forwarder
            if forwarder is not None:
                forwarder.start()
        with self._pending_lock:
            self._seen.clear()                  # new rules: everything deserves a new look
        self.watcher.stop()                 # folders, exclusions or settle time may differ
        self.watcher = self._build_watcher(config)
        self.watcher.start()
        self.launch.stop()
        self.allowlist = type(self.allowlist)(config.allowlist)
        self._check_allowlist()
        self.launch = self._build_launch(config)
        self.launch.start()
        self.meeting.apps = frozenset(a.lower() for a in config.meeting_apps)
        self.meeting.linger_s = config.meeting_linger_s
        self._log(admin_record("config-reload", message=f"configuration reloaded from "
                               f"{config.source}", mode=config.mode,
                               rule_errors=self.rule_errors or None))
        self.request_sweep()

    def _watch_overflowed(self) -> None:
        """The kernel's event queue overflowed (a burst of files): events were lost, the
        watcher watches every folder afresh, and a sweep gives each file its verdict."""
        self.counters.bump("watch_overflows")
        self._log(admin_record("watch-overflow", outcome="failure", message=(
            "the file event queue overflowed, so events were lost: every watched folder "
            "is watched afresh and swept")))
        self.request_sweep()

    def request_sweep(self) -> None:
        self._sweep_now.set()
        self._wake.set()

    # --- intake --------------------------------------------------------------------------
    def _offer(self, path: Path, folder: WatchFolder, why: str) -> None:
        """Queue a file unless it is queued already or unchanged since its last scan.

        Watcher threads never block: on a full queue the file is dropped and a sweep is
        scheduled for when the queue has drained. Sweeps (the housekeeper's thread) wait
        for room instead, so a sweep can never cause another sweep.
        """
        key = os.fspath(path)
        if why == "sweep":
            try:
                st = os.lstat(path)
            except OSError:
                return
            with self._pending_lock:
                unchanged = self._seen.get(hash(key)) == hash(FileIdentity.of(st))
            if unchanged:
                self.counters.bump("skipped_unchanged")
                return
        with self._pending_lock:
            if key in self._pending:
                return
            self._pending.add(key)
        job = _Job(path, folder, why)
        if threading.current_thread() is self._housekeeper:
            while not self._stop.is_set():
                try:
                    self._queue.put(job, timeout=0.5)
                    self.counters.bump("queued")
                    return
                except queue.Full:
                    continue
        else:
            try:
                self._queue.put_nowait(job)
                self.counters.bump("queued")
                return
            except queue.Full:
                self.counters.bump("dropped")
                self._overflowed = True
        with self._pending_lock:
            self._pending.discard(key)

    def _housekeep(self) -> None:
        """Sweeps, allowlist and break-glass changes, status.json.

        At most one round a second while anything happens; when idle it sleeps until a
        poke (a handled file, a sweep request, a change to the allowlist's or the
        break-glass file's folder) or the 10 s status heartbeat: every wake-up of an idle
        agent costs CPU.
        """
        next_sweep = time.monotonic()
        last_sweep = 0.0
        failing: dict[str, str] = {}       # step -> its last failure, logged once
        while not self._stop.is_set():
            started = now = time.monotonic()
            drained = self._queue.qsize() < self.config.queue_size // 2
            overflow_due = self._overflowed and drained and now - last_sweep >= 2.0
            if self._sweep_now.is_set() or now >= next_sweep or overflow_due:
                self._sweep_now.clear()
                self._overflowed = False
                try:
                    self.watcher.sweep("sweep")
                    self.counters.bump("sweeps")
                except Exception as exc:
                    self._error(f"sweep failed: {exc}")
                last_sweep = time.monotonic()
                next_sweep = last_sweep + self.config.sweep_interval_s
            self._wake.clear()
            busy = False
            for step in (self._check_allowlist, self._check_break_glass,
                         self._maybe_write_status, self._feed_watchdog, self._reap_parsers):
                name = step.__name__.lstrip("_")
                try:
                    busy = bool(step()) or busy
                    failing.pop(name, None)
                except Exception as exc:
                    # One broken step must not end the thread: every later round of
                    # every other step (sweeps, status, the service watchdog) would stop.
                    # Logged once per distinct failure, not once a second.
                    text = f"housekeeping: {name} failed: {type(exc).__name__}: {exc}"
                    if failing.get(name) != text:
                        failing[name] = text
                        self._error(text)
            busy = busy or self._queue.qsize() > 0 or self._overflowed
            idle_s = min(_HEARTBEAT_S, self._watchdog_s or _HEARTBEAT_S,
                         max(0.0, next_sweep - time.monotonic()))
            self._wake.wait(1.0 if busy else idle_s)
            rest = 1.0 - (time.monotonic() - started)
            if rest > 0 and not self._sweep_now.is_set():
                self._stop.wait(rest)          # a burst of pokes: still one round a second

    def _reap_parsers(self) -> None:
        """Parser workers idle for parser_idle_s exit: an idle agent holds no parser memory."""
        reap = getattr(self.scanner, "reap_idle", None)
        if reap is not None:
            reap()

    def _feed_watchdog(self) -> None:
        """WATCHDOG=1 to systemd while the pipeline works: every worker thread alive, and
        files queued are being scanned. A hung agent stops feeding and is restarted."""
        if self._watchdog_s is None:
            return
        now = time.monotonic()
        scanned = self.counters.scanned
        if scanned != self._progress[0] or self._queue.qsize() == 0:
            self._progress = (scanned, now)
        stalled_s = now - self._progress[1]
        alive = all(t.is_alive() for t in self._workers)
        if alive and stalled_s < _STALL_S:
            systemd.notify("WATCHDOG=1")
        elif not self._stall_reported:
            self._stall_reported = True
            self._error("pipeline stalled: " + ("a worker thread died" if not alive else
                        f"no file scanned for {stalled_s:.0f} s with {self._queue.qsize()} "
                        "queued") + "; not feeding the service watchdog")

    def _check_allowlist(self) -> None:
        """Hot reload: a good edit applies at once; a bad one is refused and logged with
        file and line, and the last good list stays in force."""
        changed, error = self.allowlist.reload()
        if error is not None:
            text = str(error)
            if text != self._allowlist_error:
                self._allowlist_error = text
                self._error(f"allowlist refused, last good list kept: {text}")
                self._log(admin_record("allowlist-reload", outcome="failure", message=text))
            return
        recovered = bool(self._allowlist_error) and self.allowlist.error is None
        if recovered:
            # The file is good again; maybe the very list in force (a bad edit undone),
            # which is no change and must still clear the error.
            self._allowlist_error = ""
        if changed:
            self.launch.allowlist_changed()
        if changed or recovered:
            cur = self.allowlist.current
            self._log(admin_record("allowlist-reload", message=f"allowlist loaded: "
                                   f"{len(cur.entries)} entries", entries=len(cur.entries),
                                   fingerprint=getattr(cur, "fingerprint", "")))

    def _check_break_glass(self) -> None:
        on = self.break_glass_on()
        if on != self._break_glass_seen:
            self._break_glass_seen = on
            self._log(admin_record("break-glass", outcome="success", message=(
                "break-glass file present: monitor mode in force" if on else
                "break-glass file removed: configured mode restored"),
                file=str(self.config.break_glass_file), mode=self.effective_mode()))
            self.write_status("running")

    # --- launch control follow-ups (never on the answering path) ---------------------------
    def _launch_event(self, r: dict[str, Any]) -> None:
        if r["allow"]:
            action = "exec-would-deny" if "would deny" in r["because"] else "exec-allowed"
        else:
            action = "exec-denied"
        if r["how"] in ("fail-open", "fail-closed"):
            action = "exec-timeout"
        rec = admin_record(action, outcome="success", message=r["because"], path=r["path"],
                           decision={"allow": r["allow"], "how": r["how"],
                                     "because": r["because"], "entry": r["entry"],
                                     "fail_mode": r["how"] if r["how"].startswith("fail")
                                     else "", "mode": r["mode"]},
                           backend=r["backend"], latency_ms=r["latency_ms"],
                           outcome_detail=r.get("outcome"))
        rec["event"]["kind"] = "alert" if not r["allow"] else "event"
        rec["event"]["category"] = ["process"]
        rec["event"]["type"] = ["denied"] if not r["allow"] else ["allowed"]
        rec["process"] = r["process"]
        if r["info"].get("sha256"):
            rec.setdefault("file", {})["hash"] = {"sha256": r["info"]["sha256"]}
        verdict = r["info"].get("verdict")
        rec["guard"]["decision"]["verdict"] = verdict["level"] if verdict else "not-scanned"
        if verdict:
            rec["guard"]["verdict"] = verdict["level"]
            rec["guard"]["codes"] = verdict["codes"]
            if verdict["rules"]:
                rec["rule"] = {"name": verdict["rules"]}
        rec.pop("user", None)
        self._log(rec)

    def _launch_denied(self, r: dict[str, Any]) -> None:
        """Quarantine the file whose launch was denied, and tell the employee."""
        path = Path(r["path"])
        info = r["info"]
        root = next((Path(w.path) for w in self.config.watch
                     if _is_under(path, Path(w.path))), None)
        qid = ""
        if root is not None and info.get("sha256"):
            try:
                item = self.vault.quarantine(root, path, info["identity"], info["sha256"], {
                    "verdict": "not-allowlisted", "reasons": [{
                        "code": "exec-denied", "severity": "malicious",
                        "message": f"'{path.name}' tried to run and is not on the allowlist."}],
                    "rules": [], "summary": f"'{path.name}' tried to run and is not on the "
                    "allowlist.", "source": "launch-control", "process": r["process"]})
                qid = item.id
                self.counters.bump("quarantined")
            except (QuarantineError, OSError) as exc:
                self._error(f"{path}: quarantine after denied launch failed: {exc}")
        body = (f"'{path.name}' tried to run and was stopped: it is not on your company's "
                "list of allowed programs." + (" It was moved to quarantine." if qid else "")
                + " If you need it, ask your IT or security team to check and allow it.")
        self.notifier.notify("guard stopped a program", body, path=str(path),
                             quarantine_id=qid)

    # --- work ----------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            try:
                job = self._queue.get(timeout=10.0)
            except queue.Empty:
                if self._worked:              # idle after work: give freed heap back
                    self._worked = False
                    _release_memory()
                continue
            self._worked = True
            if job is None:
                return
            with self._pending_lock:
                self._pending.discard(os.fspath(job.path))
            try:
                self.handle(job)
            except Exception as exc:   # the daemon never dies on one bad file
                self.counters.bump("errors")
                self._error(f"{job.path}: {type(exc).__name__}: {exc}")
            self._wake.set()           # status.json shows it within a second

    def handle(self, job: _Job) -> None:
        key = os.fspath(job.path)
        try:
            st = os.lstat(job.path)
        except OSError:
            return                                   # gone before we got to it
        if not (st.st_mode & 0o170000 == 0o100000):
            return                                   # links, fifos, folders: not ours
        ident = FileIdentity.of(st)
        with self._pending_lock:
            unchanged = self._seen.get(hash(key)) == hash(ident)
        if unchanged:
            self.counters.bump("skipped_unchanged")
            return
        config, scanner = self.config, self.scanner
        verdict = scanner.scan_file(job.path, follow=False)
        self.counters.bump("scanned")
        if verdict.failure is Failure.CHANGED and job.attempt < _RESCANS_MAX:
            self._requeue(job)
            return
        self.counters.bump(verdict.level.value)
        meeting = self.meeting.active
        decision = decide(verdict, self.effective_mode(), meeting, config.quarantine_suspicious)
        # Read the download metadata only for files that get a record (before a move).
        logged = verdict.flagged or decision.intended is not Action.ALLOW or config.log_clean
        provenance = self._provenance(job.path) if logged else {}
        qid, error, moved_ms = "", "", None
        if decision.action is Action.QUARANTINE:
            moving = time.monotonic()
            try:
                qid = self._quarantine(job, verdict, decision, provenance)
                moved_ms = (time.monotonic() - moving) * 1000
            except FileChanged:
                if job.attempt < _RESCANS_MAX:
                    self._requeue(job)
                    return
                error = "the file kept changing; not quarantined"
            except (QuarantineError, OSError) as exc:
                error = f"quarantine failed: {exc}"
                self.counters.bump("failed")
        self._remember_verdict(verdict)
        if verdict.level is Level.MALICIOUS and not qid:
            self.launch.guard_file(os.fspath(job.path))   # left in place: still no launch
        with self._pending_lock:
            self._seen.pop(hash(key), None)            # re-insert: now the newest
            # A scan that failed (the file changed under the read, could not be read) is
            # not done: the next event or sweep must try again, even if nothing changes.
            if not verdict.error:
                self._seen[hash(key)] = hash(ident)
            while len(self._seen) > _SEEN_MAX:
                del self._seen[next(iter(self._seen))]
        if logged or error:
            self._log(scan_record(decision, job.folder.source, provenance, qid,
                                  error=error, trigger=job.why, quarantine_ms=moved_ms))
        if qid:
            self.counters.bump("quarantined")
            title, body = quarantine_message(job.path.name, verdict.summary, meeting)
            self.notifier.notify(title, body, path=str(job.path), quarantine_id=qid)

    def _remember_verdict(self, verdict) -> None:
        """Keep flagged verdicts by file and content (device, inode, sha256) for launch
        decisions (a clean file that is launched is scanned again then: rare, and it keeps
        this small). By content, not by timestamps: a rewrite with the mtime put back, or
        through a writable mapping (no timestamp changes at all), does not inherit the
        old content's verdict, and a rename or a new hard link (which change the ctime)
        does not lose it."""
        if verdict.identity is None or not verdict.flagged or not verdict.sha256:
            return
        ident = (*verdict.identity.inode, verdict.sha256)
        summary = _launch_summary(verdict)
        with self._pending_lock:
            known = self._verdicts.pop(ident, None)
            # The worst verdict a file earned stays with it: a disguise judged malicious
            # under its first name is not laundered by a rename or a second hard link.
            if known is not None and Level(known["level"]).rank > verdict.level.rank:
                summary = known
            self._verdicts[ident] = summary
            while len(self._verdicts) > _VERDICTS_MAX:
                del self._verdicts[next(iter(self._verdicts))]

    def _verdict_for_launch(self, path: str, st: os.stat_result, sha256: str,
                            scan: bool = True) -> dict[str, Any] | None:
        """The verdict of the file about to run (*sha256*: its content, hashed by launch
        control): the one from its scan when it is the same file with the same content,
        else (with *scan*) a scan now (first launch of a file that arrived before the
        agent, or changed since). None for very large files, or unknown without *scan*."""
        ident = (st.st_dev, st.st_ino, sha256)
        with self._pending_lock:
            known = self._verdicts.get(ident)
        if known is not None or not scan or st.st_size > _LAUNCH_SCAN_MAX:
            return known
        verdict = self.scanner.scan_file(path, follow=False)
        if verdict.error:
            return None
        self._remember_verdict(verdict)
        return _launch_summary(verdict)

    def _requeue(self, job: _Job) -> None:
        try:
            self._queue.put_nowait(_Job(job.path, job.folder, Trigger.RESCAN, job.attempt + 1))
        except queue.Full:
            self.request_sweep()

    def _quarantine(self, job: _Job, verdict, decision, provenance) -> str:
        meta = {"verdict": verdict.level.value, "reasons": [r.to_dict() for r in verdict.reasons],
                "rules": list(verdict.rules), "summary": verdict.summary,
                "source": job.folder.source, "provenance": provenance,
                "meeting": decision.meeting, "type": verdict.type.to_dict()}
        item = self.vault.quarantine(Path(job.folder.path), job.path, verdict.identity,
                                     verdict.sha256, meta)
        return item.id

    def _provenance(self, path: Path) -> dict[str, Any]:
        try:
            from .sources.provenance import read_provenance
            return read_provenance(path).to_dict()
        except Exception:
            return {}

    # --- side channels -------------------------------------------------------------------
    def _meeting_changed(self, active: bool, app: str) -> None:
        self._log(admin_record("meeting-started" if active else "meeting-ended",
                               message=f"call app {app!r} {'running' if active else 'gone'}",
                               meeting=active, app=app))
        self.write_status("running")

    def _log(self, record: dict[str, Any]) -> None:
        try:
            self.audit.write(record)
        except Exception as exc:
            self.last_error = f"audit log: {exc}"
            return
        if self.forwarder is not None:
            self.forwarder.poke()               # to the SIEM now, not at the next poll

    def _error(self, message: str) -> None:
        self.last_error = message
        self.counters.bump("errors")
        self._log(admin_record("guard-error", outcome="failure", message=message))

    def status(self, state: str) -> dict[str, Any]:
        return {"state": state, "pid": os.getpid(), "version": __version__,
                "mode": self.config.mode, "config": self.config.source,
                "started_at": self.started_at, "updated_at": time.time(),
                "watched": [{"path": str(w.path), "source": w.source}
                            for w in self.watcher.watching],
                "not_watched": list(self.watcher.errors),
                "queue_depth": self._queue.qsize(), "meeting": self.meeting.active,
                "counters": self.counters.to_dict(), "last_error": self.last_error,
                "rule_errors": self.rule_errors, "quarantine_dir": str(self.config.quarantine_dir),
                "log_file": str(self.config.log_file),
                "effective_mode": self.effective_mode(), "break_glass": self.break_glass_on(),
                "launch_control": self.launch.status(),
                "allowlist": {"path": str(self.config.allowlist),
                              "entries": len(self.allowlist.current.entries),
                              "error": self._allowlist_error,
                              "pull": self.puller.status() if self.puller else None},
                "syslog": self.forwarder.status() if self.forwarder else None,
                "parsers": _parser_status(self.scanner)}

    def _status_token(self) -> tuple:
        """What status.json shows that can change, cheap to compare once a second."""
        return (tuple(self.counters.to_dict().values()), self._queue.qsize(),
                self.meeting.active, self.last_error, self._break_glass_seen,
                self.config.mode, id(self.allowlist.current), self._allowlist_error,
                tuple(self.launch.stats.values()), len(self.watcher.watching), len(self.watcher.errors),
                len(self.rule_errors))

    def _maybe_write_status(self) -> bool:
        """Rewrite status.json when something changed (returns True), else every 10 s as
        a heartbeat."""
        token = self._status_token()
        changed = token != self._status_last
        if changed or time.monotonic() - self._status_written >= _HEARTBEAT_S:
            self._status_last = token
            self._status_written = time.monotonic()
            self.write_status("running")
        return changed

    def write_status(self, state: str, status: dict[str, Any] | None = None) -> None:
        path = self.config.state_dir / "status.json"
        tmp = path.with_name(f".status.{os.getpid()}.tmp")
        with self._status_lock:          # the housekeeper, start/stop and reload all write
            try:
                tmp.write_text(json.dumps(status or self.status(state), indent=1))
                os.replace(tmp, path)
            except OSError as exc:
                self.last_error = f"status file: {exc}"


def read_status(config: Config) -> dict[str, Any] | None:
    """The running daemon's status, or None when none runs with this config."""
    path = config.state_dir / "status.json"
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    lock = config.state_dir / "guard.lock"
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None                       # nobody holds the lock: no daemon
    except BlockingIOError:
        return status
    finally:
        os.close(fd)



def _is_under(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _forwarding(config: Config) -> tuple:
    return (config.syslog_target, config.syslog_format, config.syslog_facility,
            config.syslog_tls_ca, config.syslog_tls_cert, config.syslog_tls_key,
            config.syslog_tls_verify, config.log_file)


def _launch_summary(verdict) -> dict[str, Any]:
    return {"level": verdict.level.value, "codes": list(verdict.codes),
            "rules": list(verdict.rules), "summary": verdict.summary}


_M_MMAP_THRESHOLD = -3      # glibc mallopt() parameters
_M_ARENA_MAX = -8


def _parser_status(scanner: Scanner) -> dict[str, Any]:
    if not isinstance(scanner, IsolatedScanner):
        return {"isolated": False}
    b = scanner.budget
    return {"isolated": True, "workers_started": scanner.started,
            "failures": scanner.failures, "idle_workers": scanner.worker_pids(),
            "unavailable": scanner.unavailable, "worker_user": scanner.worker_user,
            "budget": {"cpu_s": b.cpu_s, "memory_mb": b.memory_mb, "wall_s": b.wall_s}}


def _close_scanner(scanner: Scanner) -> None:
    close = getattr(scanner, "close", None)
    if close is not None:
        close()


def _tune_malloc() -> None:
    """Serve file-sized buffers (>= 2 MiB) from mmap, so freeing one returns it at once.

    glibc otherwise raises its mmap threshold to the largest buffer freed so far, and a
    10 MB buffer freed in a worker thread's arena then stays resident: malloc_trim() does
    not shrink the top of a thread arena. Measured: 51 -> 40 MB RSS after ten 10 MB scans,
    no measurable cost per scan. Fixing the threshold also stops its dynamic growth.
    """
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 2 << 20)
        # Two heaps for a dozen threads: the GIL serialises most allocations anyway, and
        # every extra heap keeps its own freed-but-resident pages.
        libc.mallopt(_M_ARENA_MAX, 2)
    except (OSError, AttributeError):
        pass                                # not glibc: nothing to tune


def _release_memory() -> None:
    """glibc keeps freed heap for reuse; after a burst of large files, return it."""
    import gc
    gc.collect()          # parser objects left in reference cycles hold file buffers
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
