"""Launch control's orchestrator: nothing that lives in a watched folder runs unless the
allowlist says so.

Split by role, the way Santa splits its exec path:

- a source (``sources.exec_sources``: fanotify or the portable monitor) emits exec events;
- this module gathers the facts of one launch (the file's identity and content hash, its
  signers when an entry needs them, the allowlist entry that matches, its verdict) and
  asks the pure exec policy (``policy.exec_policy.decide_exec``);
- the answer goes to the kernel first (or the process is stopped: ``actions.process``);
- then, on the follow-up thread, the decision is recorded, and a denied file is
  quarantined and the employee told (``LaunchFollowUp``);
- answers are kept in a ``DecisionCache`` that is emptied for a named reason.

Cheap questions are answered on the fanotify reader thread (the guard itself, non-launch
opens, cached decisions); the rest on the decision pool, under the deadline the source
enforces (the fail mode answers what misses it).
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..actions.process import stop_process
from ..audit.record import exec_record
from ..errors import QuarantineError
from ..events import Launch, ProcessInfo, parent_pid, read_cmdline, read_link
from ..fsutil import open_for_writing
from ..hashing import sha256_fd
from ..policy.exec_policy import decide_exec, exempt
from ..sources.fanotify import Answer, PermEvent
from ..sources.procpoll import interpreter_name, launch_target, under
from ..verdict import (ExecDecision, ExecTarget, FileIdentity, FlushReason, How, Mode,
                       Problem, Verdict, VerdictSummary)
from .decision_cache import DecisionCache
from .health import AuditSink, Counters, Problems
from .verdicts import VerdictMemory

LAUNCH_SCAN_MAX = 64 * 1024 * 1024   # a launch of a larger unscanned file is not scanned
_SIGNED_MAX = 64 << 20               # bytes read to verify a signature


def _own_roots() -> tuple[str, ...]:
    """The guard's own interpreter and package: always allowed, wherever they live."""
    pkg = Path(__file__).resolve().parents[1]
    return tuple({os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix), str(pkg)})


@dataclass
class LaunchOutcome:
    """One answered launch, handed to the follow-up thread: what was decided, about which
    file and process, how fast, and what is still to be worked out (the verdict)."""

    decision: ExecDecision
    path: str
    process: ProcessInfo
    backend: str
    latency_ms: float
    target: ExecTarget | None = None
    verdict: VerdictSummary | None = None
    verdict_later: bool = False      # not known when answered: scan for the record
    outcome: str = ""                # what stopping the process did (portable monitor)


class LaunchControl:
    """Implements the source's handler (``quick``, ``decide``, ``report``, ``on_launch``)
    over the exec policy. Built and started by the daemon with its source."""

    def __init__(self, *, source: Any, why: str, allowlist: Any, mode: Callable[[], Mode],
                 break_glass: Callable[[], bool], verdicts: VerdictMemory,
                 scan: Callable[[str], Verdict], follow_up: "LaunchFollowUp"):
        self.source = source
        self.backend = source.backend if source is not None else "off"
        self.why = why
        self.allowlist = allowlist          # AllowlistStore: .current.match(...)
        self.mode = mode
        self.break_glass = break_glass
        self.verdicts = verdicts
        self.scan = scan
        self.follow_up = follow_up
        self.cache = DecisionCache()
        self.pid = os.getpid()
        self.own = _own_roots()
        self.test_delay_s = float(os.environ.get("GUARD_TEST_DECISION_DELAY_S", "0") or 0)
        self.stats = {"decisions": 0, "denied": 0, "allowed": 0, "timeouts": 0, "cached": 0}

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        if self.source is not None:
            self.source.start(self)

    def stop(self) -> None:
        if self.source is not None:
            self.source.stop()              # first: the kernel allows whatever is pending
        self.follow_up.stop()

    def mark_folder(self, folder: str) -> None:
        """A new folder appeared under a watched one: put it under launch control too."""
        if self.source is not None:
            self.source.mark_folder(folder)

    def guard_file(self, path: str) -> bool:
        """Keep launch control on a file judged malicious that stays where it is (monitor
        mode, break-glass, a failed move), also once it is moved out of the watched
        folders."""
        return self.source.guard_file(path) if self.source is not None else False

    def flush(self, reason: FlushReason) -> None:
        self.cache.flush(reason)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.backend, "why": self.why, **self.stats,
                               "cache": {"entries": len(self.cache),
                                         "flushes": dict(self.cache.flushes)}}
        if self.source is not None:
            out.update(self.source.status())
        return out

    # --- the facts and the policy --------------------------------------------------------
    def _judge(self, path: str, fd: int, st: os.stat_result, writable: bool
               ) -> tuple[ExecDecision, ExecTarget | None, VerdictSummary | None, bool]:
        """(decision, target, verdict, verdict_later) for one launch of *path* (read
        through *fd*)."""
        if any(under(path, [r]) for r in self.own):
            return exempt("the guard's own files"), None, None, False
        identity = FileIdentity.of(st)
        if self.break_glass():
            target = ExecTarget(path, identity, writable=writable)
            return (decide_exec(target, None, None, self.mode(), _dt.datetime.now(),
                                break_glass=True), target, None, False)
        sha256 = sha256_fd(fd)[0]
        target = ExecTarget(path, identity, sha256, writable)
        current = self.allowlist.current
        signers: tuple[str, ...] = ()
        if current.has_signers:
            signers = _signers(fd)
        now = _dt.datetime.now()
        match = current.match(sha256, path, signers, now.date())
        # A verdict can change the answer only for a path-glob entry: only then may a scan
        # (a first launch, a parser worker starting) hold the launch. Otherwise the known
        # verdict, if any, is used and a missing one is worked out for the record after
        # the answer went out.
        needed = match is not None and match.kind == "path"
        verdict = self.verdicts.lookup(identity, sha256)
        if verdict is None and needed:
            verdict = self.verdict_now(path, identity)
        later = verdict is None and not needed
        return decide_exec(target, match, verdict, self.mode(), now), target, verdict, later

    def verdict_now(self, path: str, identity: FileIdentity) -> VerdictSummary | None:
        """Scan a file about to run whose verdict is not known (it arrived before the
        agent, or changed since); None for very large files or a failed scan."""
        if identity.size > LAUNCH_SCAN_MAX:
            return None
        verdict = self.scan(path)
        if verdict.error:
            return None
        self.verdicts.remember(verdict)
        return VerdictSummary.of(verdict)

    # --- fanotify ------------------------------------------------------------------------
    def quick(self, ev: PermEvent) -> Answer | None:
        """On the reader thread: answer what needs no file read. Cheapest checks first,
        since every exec in a watched folder pays for this path."""
        if ev.pid == self.pid:
            return Answer(True, How.EXEMPT, "the guard itself")
        try:
            st = os.fstat(ev.fd)
        except OSError:
            return None
        key = FileIdentity.of(st)
        if not ev.is_exec and self.cache.same_exec(ev.pid, key):
            # the open the kernel makes for the exec it just asked us about
            return Answer(True, How.EXEMPT, "same exec")
        if ev.is_exec:
            hit = self.cache.get(key)
            if hit is not None and hit[0].allow:
                self.cache.allowed_exec(ev.pid, key)
                self.stats["cached"] += 1
                return Answer(True, How.CACHE, hit[0].because)
        else:
            # An open, not an exec: it matters only when an interpreter opens the script
            # it was started with (`sh ./x.sh`, `python x.py`).
            exe = read_link(f"/proc/{ev.pid}/exe")
            if not interpreter_name(exe):
                return Answer(True, How.EXEMPT, "not a launch")
            cmdline = read_cmdline(ev.pid)
            cwd = read_link(f"/proc/{ev.pid}/cwd")
            path = ev.path()
            # is this file the script the interpreter was started with?
            if not cmdline or launch_target("", cmdline, cwd, (path,)) != path:
                return Answer(True, How.EXEMPT, "not a launch")
        if parent_pid(ev.pid) == self.pid:
            return Answer(True, How.EXEMPT, "the guard's own child")
        # Only a refusal is taken from the cache here: an allow was taken above for an exec,
        # and is never taken for an interpreter's open of its script. A script can be
        # rewritten through a shared writable mapping without any timestamp changing
        # (unlike a program: a writable mapping makes its exec fail), so the key can
        # still match while the content does not: its content is hashed at every run.
        hit = self.cache.get(key)
        if hit is not None and not hit[0].allow:
            self.stats["cached"] += 1
            # a refusal is logged: with this file's path (the decision may have been made
            # for another name of it), its hash and the process, read while it still waits
            decision, target = hit
            return Answer(False, How.CACHE, decision.because,
                          LaunchOutcome(_as_cached(decision), ev.path(),
                                        ProcessInfo.read(ev.pid), "fanotify", 0.0, target))
        return None

    def decide(self, ev: PermEvent) -> Answer:
        """On the decision pool, under the deadline."""
        if self.test_delay_s:
            time.sleep(self.test_delay_s)        # test hook: a deliberately slow decision
        st = os.fstat(ev.fd)
        path = ev.path()
        # A file open for writing (or mapped writable) somewhere may change after the
        # read without its timestamps changing: decided for this launch only. Asked
        # before the read: a writer who comes after it changes the timestamps.
        writable = open_for_writing(ev.fd)
        d, target, verdict, later = self._judge(path, ev.fd, st, writable)
        self.stats["decisions"] += 1
        if d.lasting:
            self.cache.put(FileIdentity.of(st), d, target)
            if d.allow and ev.is_exec:
                self.cache.allowed_exec(ev.pid, FileIdentity.of(st))
        return Answer(d.allow, d.how, d.because,
                      LaunchOutcome(d, path, ProcessInfo.read(ev.pid), "fanotify", 0.0,
                                    target, verdict, later))

    def report(self, ev: PermEvent, ans: Answer, latency_s: float) -> None:
        """After the answer went out (the event's fd is still open): hand the record, and
        a denial's follow-up, over. What the deciding side saw comes with the answer, so
        a late decision can never lend its file to another event's record."""
        if ans.how is How.EXEMPT or (ans.how is How.CACHE and ans.allow):
            return                                  # repeated allowed launches: no noise
        outcome = ans.detail
        if not isinstance(outcome, LaunchOutcome):  # the deadline answered: no facts
            outcome = LaunchOutcome(ExecDecision(ans.allow, ans.how, ans.because,
                                                 mode=self.mode()),
                                    ev.path(), ProcessInfo.read(ev.pid), "fanotify", 0.0)
            self.stats["timeouts"] += 1
        outcome.latency_ms = round(latency_s * 1000, 3)
        self._account(ans.allow)
        self.follow_up.submit(outcome)

    # --- portable monitor ----------------------------------------------------------------
    def on_launch(self, launch: Launch) -> None:
        """A process already started: stop it now if it may not run, then record."""
        try:
            fd = os.open(launch.target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        verdict = None
        later = False
        try:
            st = os.fstat(fd)
            key = FileIdentity.of(st)
            hit = self.cache.get(key)
            cached = hit is not None
            if hit is None:
                d, target, verdict, later = self._judge(launch.target, fd, st,
                                                        open_for_writing(fd))
                self.cache.put(key, d, target)
            else:
                d, target = _as_cached(hit[0]), hit[1]
        finally:
            os.close(fd)
        if d.how is How.EXEMPT or (cached and d.allow):
            return                                  # repeated allowed launches: no noise
        stopped = "" if d.allow else stop_process(launch)
        self._account(d.allow)
        self.follow_up.submit(LaunchOutcome(
            d, launch.target, launch.process, "monitor",
            round((time.monotonic() - launch.seen_at) * 1000, 3), target, verdict, later,
            stopped))

    def _account(self, allow: bool) -> None:
        self.stats["allowed" if allow else "denied"] += 1


class LaunchFollowUp:
    """After the answer, on its own thread (never on the answering path): the record of
    the decision, then for a denial the quarantine of the file and the employee's notice.
    Every failure is reported to *problems*, never dropped silently."""

    def __init__(self, *, audit: AuditSink, problems: Problems, counters: Counters,
                 vault: Any, notifier: Any, roots: Callable[[], list[Path]],
                 verdict_now: Callable[[str, FileIdentity], VerdictSummary | None]
                 | None = None):
        self.audit = audit
        self.problems = problems
        self.counters = counters
        self.vault = vault
        self.notifier = notifier
        self.roots = roots                  # the watched folders a denied file may be in
        self.verdict_now = verdict_now
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guard-launch")

    def submit(self, outcome: LaunchOutcome) -> None:
        try:
            self._pool.submit(self._run, outcome)
        except RuntimeError:                # stopping: the record is lost, and counted
            self.problems.report(Problem.LAUNCH_RECORD, f"{outcome.path}: "
                                 f"{outcome.decision.action} not recorded: stopping")

    def stop(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)

    def report_later(self, kind: Problem, message: str) -> None:
        """Report a failure from a thread that must not wait (a source answering the
        kernel): the report, and its record, are made on the follow-up thread."""
        try:
            self._pool.submit(self.problems.report, kind, message)
        except RuntimeError:                # stopping: counted at least
            self.counters.bump("errors")

    def _run(self, o: LaunchOutcome) -> None:
        try:
            if o.verdict_later and o.target is not None and self.verdict_now is not None:
                o.verdict = self.verdict_now(o.path, o.target.identity)
            self.audit(exec_record(o.decision, o.path, o.process.to_ecs(),
                                   backend=o.backend, latency_ms=o.latency_ms,
                                   sha256=o.target.sha256 if o.target else "",
                                   verdict=o.verdict, uid=o.process.uid, outcome=o.outcome))
        except Exception as exc:  # noqa: BLE001 - reported, and the denial still follows
            self.problems.report(Problem.LAUNCH_RECORD, f"{o.path}: {o.decision.action} "
                                 f"not recorded: {type(exc).__name__}: {exc}")
        if o.decision.allow:
            return
        try:
            self._denied(o)
        except Exception as exc:  # noqa: BLE001 - reported; the launch was refused anyway
            self.problems.report(Problem.LAUNCH_FOLLOW_UP, f"{o.path}: after a denied "
                                 f"launch: {type(exc).__name__}: {exc}")

    def _denied(self, o: LaunchOutcome) -> None:
        """Quarantine the file whose launch was denied, and tell the employee."""
        path = Path(o.path)
        root = next((r for r in self.roots() if _is_under(path, r)), None)
        qid = ""
        if root is not None and o.target is not None and o.target.sha256:
            summary = f"'{path.name}' tried to run and is not on the allowlist."
            try:
                item = self.vault.quarantine(root, path, o.target.identity, o.target.sha256, {
                    "verdict": "not-allowlisted", "reasons": [{
                        "code": "exec-denied", "severity": "malicious", "message": summary}],
                    "rules": [], "summary": summary, "source": "launch-control",
                    "process": o.process.to_ecs()})
                qid = item.id
                self.counters.bump("quarantined")
            except (QuarantineError, OSError) as exc:
                self.problems.report(Problem.QUARANTINE, f"{path}: quarantine after denied "
                                     f"launch failed: {exc}")
        body = (f"'{path.name}' tried to run and was stopped: it is not on your company's "
                "list of allowed programs." + (" It was moved to quarantine." if qid else "")
                + " If you need it, ask your IT or security team to check and allow it.")
        self.notifier.notify("guard stopped a program", body, path=str(path),
                             quarantine_id=qid)


def _as_cached(d: ExecDecision) -> ExecDecision:
    """The same decision, answered from the cache."""
    return ExecDecision(d.allow, How.CACHE, d.because, d.entry, d.would_deny, d.mode)


def _is_under(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _signers(fd: int) -> tuple[str, ...]:
    """The verified signers of the program behind *fd* (PE Authenticode; Mach-O Team IDs
    cannot be verified off macOS and never count). () when unsigned or unreadable."""
    try:
        from ..identify.filetype import exact_kind
        from ..identify.signer import signers_of
        data = os.pread(fd, _SIGNED_MAX, 0)
        kind = exact_kind(data[:4096], data[-512:])[0]
        if kind not in ("pe", "macho", "macho-fat"):
            return ()
        info = signers_of(data, kind)
        return tuple(info.names) if info.verified else ()
    except Exception:  # noqa: BLE001 - a signature that cannot be read verifies nothing
        return ()
