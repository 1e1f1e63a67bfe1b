"""The agent: wiring and lifecycle only. Builds every room from Config, starts, reloads,
stops.

    watch (events, sweeps) -> agent.pipeline: scan -> decide -> quarantine -> audit -> notify
    exec sources (fanotify | portable monitor) -> agent.launch: facts -> exec policy ->
        answer -> record -> quarantine and notify
    agent.housekeeper: sweeps, allowlist and break-glass changes, status.json, watchdog

The main thread only waits for signals: SIGHUP reloads config and rules (the last good
ones stay on error), SIGUSR1 runs a reconciliation sweep now, SIGTERM/SIGINT drain and
exit within 5 s.
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
from pathlib import Path
from typing import Any

from . import __version__
from .actions.notify import Notifier
from .actions.quarantine import Vault
from .agent.health import AuditSink, Counters, Problems
from .agent.housekeeper import Housekeeper
from .agent.launch import LaunchControl, LaunchFollowUp
from .agent.memory import tune_malloc
from .agent.parts import ModeSwitch, Parts
from .agent.pipeline import FilePipeline, PipelineParts
from .agent.status import StatusFile
from .agent.verdicts import VerdictMemory
from .audit.record import admin_record
from .config import Config, load_config
from .errors import ConfigError, GuardError, LockedError
from .platform import systemd
from .sources.exec_sources import open_exec_source
from .sources.meeting import MeetingMonitor
from .sources.watch import FolderWatcher
from .verdict import FailMode, Problem

DRAIN_S = 4.0              # SIGTERM: finish queued work for this long, then leave
_PARSER_START_S = 30.0     # start-up waits this long at most for the first parser worker


class Daemon:
    def __init__(self, config: Config, config_path: str | None = None):
        self.config_path = config_path
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._lock_fd = acquire_lock(config)       # before anything opens the log or vault
        if config.source == "<embedded default>":
            # the default download folder is created before launch control computes the
            # folders it guards, so launch control is on from the first run
            for w in config.watch:
                if w.source == "browser" and not Path(w.path).exists():
                    Path(w.path).mkdir(parents=True, exist_ok=True)
        counters = Counters()
        problems = Problems(counters)
        from .audit.writer import open_for
        audit = AuditSink(open_for(config), problems)
        problems.log = audit
        scanner, rule_errors = build_scanner(config)
        parts = self.parts = Parts(
            config=config, counters=counters, problems=problems, audit=audit,
            mode=ModeSwitch(config.mode, config.break_glass_file), verdicts=VerdictMemory(),
            vault=Vault(config.quarantine_dir),
            notifier=Notifier(config.notify, on_failure=lambda m: problems.report(
                Problem.NOTIFY, m)),
            scanner=scanner, rule_errors=rule_errors, meeting=None,
            allowlist=_allowlist_store(config))
        self.status = StatusFile(parts)
        self.housekeeper = Housekeeper(parts, self.status)
        parts.meeting = MeetingMonitor(
            config.meeting_apps, config.meeting_linger_s, config.meeting_poll_s,
            on_change=self.housekeeper.meeting_changed,
            on_error=lambda m: problems.report(Problem.MEETING, m))
        parts.forwarder = audit.forwarder = build_forwarder(config, audit)
        parts.pipeline = FilePipeline(config, PipelineParts(
            scanner=scanner, vault=parts.vault, audit=audit, problems=problems,
            counters=counters, mode=parts.mode.effective, meeting=lambda: parts.meeting.active,
            notifier=parts.notifier, verdicts=parts.verdicts,
            keep_guarded=lambda path: parts.launch.guard_file(path),
            request_sweep=self.housekeeper.request_sweep, poke=self.housekeeper.poke))
        parts.watcher = self._build_watcher(config)
        parts.puller = build_puller(config, parts, self.housekeeper)
        parts.launch = build_launch(config, parts)

    # --- construction --------------------------------------------------------------------
    def _build_watcher(self, config: Config) -> FolderWatcher:
        parts, keeper = self.parts, self.housekeeper
        return FolderWatcher(config.watch, parts.pipeline.offer, config.exclude,
                             config.settle_s,
                             on_new_folder=lambda folder: parts.launch.mark_folder(folder),
                             control_files=(config.allowlist, config.break_glass_file),
                             on_control_change=keeper.poke,
                             on_overflow=keeper.watch_overflowed)

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        parts = self.parts
        tune_malloc()
        recovered = parts.vault.recover()
        parts.audit(admin_record("guard-started", message=f"guard {__version__} started",
                                 mode=parts.config.mode.value, config=parts.config.source,
                                 watched=[str(w.path) for w in parts.config.watch],
                                 recovered=[f"{i}:{o}" for i, o in recovered] or None,
                                 rule_errors=parts.rule_errors or None))
        if parts.forwarder is not None:
            parts.forwarder.start()
        prestart = getattr(parts.scanner, "prestart", None)
        if prestart is not None:
            prestart()                    # the first file need not wait for a parser worker
        parts.pipeline.start()
        parts.watcher.start()
        for err in parts.watcher.errors:
            parts.problems.report(Problem.WATCH, err)
        self.housekeeper.check_allowlist()
        self._start_launch()
        parts.meeting.poll()
        parts.meeting.start()
        if parts.puller is not None:
            parts.puller.start()
        started = getattr(parts.scanner, "wait_prestarted", None)
        if started is not None:
            # Before the housekeeper, whose status.json also says "running": running means
            # files are scanned at full speed.
            started(_PARSER_START_S)
        self.housekeeper.start()
        self.status.write("running")
        systemd.notify("READY=1", f"STATUS=watching {len(parts.watcher.watching)} folders, "
                       f"launch control {parts.launch.backend}")

    def _start_launch(self) -> None:
        launch = self.parts.launch
        launch.start()
        self.parts.audit(admin_record(
            "launch-control", message=f"launch control: {launch.backend}"
            + (f" ({launch.why})" if launch.why else ""), backend=launch.backend))

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
        signal.signal(signal.SIGUSR1, lambda *_: self.housekeeper.request_sweep())
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
        parts = self.parts
        systemd.notify("STOPPING=1")
        self.status.write("stopping")
        parts.launch.stop()          # first: the kernel allows whatever is still pending
        parts.watcher.stop()
        parts.meeting.stop()
        if parts.puller is not None:
            parts.puller.stop()
        self._stop.set()
        self.housekeeper.stop()
        parts.pipeline.stop(DRAIN_S)
        parts.audit(admin_record("guard-stopped", message="guard stopped",
                                 counters=parts.counters.to_dict()))
        if parts.forwarder is not None:
            parts.forwarder.flush(2.0)           # what can go now goes; the rest at next start
            parts.forwarder.stop()
        parts.notifier.close(0.5)
        _close_scanner(parts.scanner)
        parts.audit.log.close()
        self.status.write("stopped")
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
        parts = self.parts
        try:
            config = load_config(self.config_path)
            scanner, rule_errors = build_scanner(config)
            puller = build_puller(config, parts, self.housekeeper)
            forwarder = build_forwarder(config, parts.audit) if _forwarding(config) != \
                _forwarding(parts.config) else parts.forwarder
        except GuardError as exc:
            parts.problems.report(Problem.RELOAD, f"reload refused, previous "
                                  f"configuration kept: {exc}")
            parts.audit(admin_record("config-reload", outcome="failure", message=str(exc)))
            return
        parts.config = parts.pipeline.config = config
        parts.mode.mode, parts.mode.break_glass_file = config.mode, config.break_glass_file
        old_scanner = parts.scanner
        parts.scanner = parts.pipeline.parts.scanner = scanner
        parts.rule_errors = rule_errors
        _close_scanner(old_scanner)           # its workers end once their scan is done
        if parts.puller is not None:
            parts.puller.stop()
        parts.puller = puller
        if puller is not None:
            puller.start()
        if forwarder is not parts.forwarder:
            if parts.forwarder is not None:
                parts.forwarder.stop()
            parts.forwarder = parts.audit.forwarder = forwarder
            if forwarder is not None:
                forwarder.start()
        parts.pipeline.forget()               # new rules: everything deserves a new look
        parts.watcher.stop()              # folders, exclusions or settle time may differ
        parts.watcher = self._build_watcher(config)
        parts.watcher.start()
        parts.launch.stop()
        parts.allowlist = _allowlist_store(config)
        self.housekeeper.forget_allowlist_error()
        self.housekeeper.check_allowlist()
        parts.launch = build_launch(config, parts)
        parts.launch.start()
        parts.meeting.apps = frozenset(a.lower() for a in config.meeting_apps)
        parts.meeting.linger_s = config.meeting_linger_s
        parts.audit(admin_record("config-reload", message=f"configuration reloaded from "
                                 f"{config.source}", mode=config.mode.value,
                                 rule_errors=rule_errors or None))
        self.housekeeper.request_sweep()


# --- builders: one per room that depends on the configuration -----------------------------
def acquire_lock(config: Config) -> int:
    """One instance per config: an exclusive lock on state_dir/guard.lock."""
    state = config.state_dir
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
    return fd


def build_scanner(config: Config) -> tuple[Any, list[str]]:
    """The scanner (parsers in worker processes unless parser_isolation is off) and the
    rule files that did not compile."""
    from .identify.containers import Limits
    from .sandbox import Budget, IsolatedScanner
    from .scanner import ScanOptions, Scanner, load_rules
    rules = load_rules(config.rules)
    options = ScanOptions(max_size_bytes=int(config.max_size_mb * 1024 * 1024),
                          yara_timeout_s=config.yara_timeout_s, limits=Limits())
    errors = [str(e) for e in rules.errors]
    if not config.parser_isolation:
        return Scanner(rules, options), errors
    return IsolatedScanner(rules, options, Budget(
        cpu_s=config.parser_cpu_s, memory_mb=config.parser_memory_mb,
        wall_s=config.parser_wall_s, idle_s=config.parser_idle_s)), errors


def build_forwarder(config: Config, audit: AuditSink):
    """Every audit record to the SIEM's syslog collector, when syslog_target is set.
    The log itself is the buffer: records written while the collector is down are
    sent when it is back (a cursor in state_dir remembers the last one delivered)."""
    if not config.syslog_target:
        return None
    from .audit.forward import SyslogForwarder

    def gap(first: int, last: int) -> None:
        audit(admin_record("forward-gap", outcome="failure", message=(
            f"records {first}..{last} were rotated out of the audit log before the syslog "
            "collector got them"), first_seq=first, last_seq=last))
    return SyslogForwarder(config.log_file, config.syslog_target, config.state_dir,
                           fmt=config.syslog_format,
                           facility=int(config.syslog_facility)
                           if config.syslog_facility.isdigit() else config.syslog_facility,
                           tls_ca=config.syslog_tls_ca, tls_cert=config.syslog_tls_cert,
                           tls_key=config.syslog_tls_key, tls_verify=config.syslog_tls_verify,
                           on_gap=gap)


def build_puller(config: Config, parts: Parts, keeper: Housekeeper):
    """The signed-allowlist puller when allowlist_url is set; keys that do not load are
    a configuration error (the agent refuses to start; a reload keeps the old)."""
    if not config.allowlist_url:
        return None
    from .policy.distribution import AllowlistPuller, DistributionError, load_public_keys
    try:
        keys = load_public_keys([str(p) for p in config.allowlist_pubkeys])
    except DistributionError as exc:
        raise ConfigError(f"allowlist_pubkeys: {exc}", path=config.source) from None

    def pulled(name: str, fields: dict[str, Any]) -> None:
        """A pull applied a new signed allowlist, or refused one: log it; apply at once."""
        fields = dict(fields)
        outcome = fields.pop("outcome", "success")
        message = fields.pop("message", "")
        parts.audit(admin_record(name, outcome=outcome, message=message, **fields))
        if outcome != "success":
            parts.problems.report(Problem.ALLOWLIST, f"allowlist pull refused, last good "
                                  f"list kept: {message}")
        keeper.poke()                         # the housekeeper reloads the new list now
    return AllowlistPuller(config.allowlist_url, keys, config.allowlist, config.state_dir,
                           interval_s=config.allowlist_pull_s,
                           ca_file=config.allowlist_ca_file, on_event=pulled)


def build_launch(config: Config, parts: Parts) -> LaunchControl:
    roots = [str(w.path) for w in config.watch if Path(w.path).is_dir()] + \
        [str(p) for p in config.launch_extra_paths if Path(p).is_dir()]
    source, why = open_exec_source(
        config.launch_control, [os.path.realpath(r) for r in roots],
        exclude=parts.watcher.excluded, deadline_s=config.decision_timeout_s,
        fail_closed=config.fail_mode is FailMode.CLOSED, poll_s=config.process_poll_s)
    follow_up = LaunchFollowUp(audit=parts.audit, problems=parts.problems,
                               counters=parts.counters, vault=parts.vault,
                               notifier=parts.notifier,
                               roots=lambda: [Path(w.path) for w in parts.config.watch])
    launch = LaunchControl(source=source, why=why, allowlist=parts.allowlist,
                           mode=parts.mode.effective, break_glass=parts.mode.break_glass_on,
                           verdicts=parts.verdicts,
                           scan=lambda path: parts.scanner.scan_file(path, follow=False),
                           follow_up=follow_up)
    follow_up.verdict_now = launch.verdict_now
    if source is not None:
        # reported from the follow-up thread: a source's threads answer the kernel and
        # must never wait for the audit log
        source.on_error = lambda m: follow_up.report_later(Problem.LAUNCH, m)
    return launch


def _allowlist_store(config: Config):
    from .policy.allowlist import AllowlistStore
    return AllowlistStore(config.allowlist)


def _forwarding(config: Config) -> tuple:
    return (config.syslog_target, config.syslog_format, config.syslog_facility,
            config.syslog_tls_ca, config.syslog_tls_cert, config.syslog_tls_key,
            config.syslog_tls_verify, config.log_file)


def _close_scanner(scanner: Any) -> None:
    close = getattr(scanner, "close", None)
    if close is not None:
        close()
