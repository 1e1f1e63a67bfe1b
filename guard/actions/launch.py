"""Launch control: nothing that lives in a watched folder runs unless the allowlist says so.

Two event sources, one policy:
- Linux with privileges: fanotify permission events, so a launch waits for the answer
  (blocked before it runs). Cheap questions are answered on the reader thread (the guard
  itself, non-launch opens, cached decisions); the rest go to a decision pool with a
  deadline; the fail mode answers whatever misses it.
- Elsewhere: the portable monitor (psutil polling) suspends and kills in enforce mode.

The answer always goes out first; audit records, quarantine and the employee's
notification follow on a separate thread, so none of them can delay a launch.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..fsutil import open_for_writing
from ..verdict import FileIdentity
from ..hashing import sha256_fd
from ..sources.procpoll import (Launch, ProcessMonitor, interpreter_name, launch_target,
                                stop_process, under)


@dataclass(frozen=True)
class LaunchDecision:
    allow: bool
    how: str                 # decided | cache | exempt | fail-open | fail-closed | break-glass
    because: str
    entry: str = ""          # "allowlist entry 3 (line 12)" when one matched
    info: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def _own_roots() -> tuple[str, ...]:
    """The guard's own interpreter and package: always allowed, wherever they live."""
    pkg = Path(__file__).resolve().parents[1]
    return tuple({os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix), str(pkg)})


class LaunchControl:
    """Owns the event source and the decision cache. Built and started by the daemon."""

    def __init__(self, *, roots: Iterable[str], allowlist, mode: Callable[[], str],
                 on_denied: Callable[[dict[str, Any]], None],
                 on_event: Callable[[dict[str, Any]], None], backend: str = "auto",
                 deadline_s: float = 1.0, fail_closed: bool = False, poll_s: float = 0.1,
                 break_glass: Callable[[], bool] = lambda: False,
                 exclude: Callable[[str], bool] = lambda p: False,
                 verdict_of: Callable[[str, os.stat_result, str], dict[str, Any] | None]
                 | None = None):
        self.roots = tuple(os.path.realpath(os.fspath(r)) for r in roots)
        self.allowlist = allowlist          # AllowlistStore: .current.match(...)
        self.mode = mode
        self.on_denied = on_denied          # quarantine + notify (runs on the follow-up thread)
        self.on_event = on_event            # audit record (follow-up thread)
        self.requested = backend
        self.deadline_s = deadline_s
        self.fail_closed = fail_closed
        self.poll_s = poll_s
        self.break_glass = break_glass
        self.exclude = exclude
        # (path, stat, sha256 of the content about to run, scan=) -> its scan verdict (a
        # summary) or None; scan=False: only a verdict already known, never a scan now
        self.verdict_of = verdict_of
        self.backend = "off"
        self.why = ""
        self.pid = os.getpid()
        self.own = _own_roots()
        self.test_delay_s = float(os.environ.get("GUARD_TEST_DECISION_DELAY_S", "0") or 0)
        self._cache: dict[tuple[int, ...], LaunchDecision] = {}
        self._cache_lock = threading.Lock()
        self._followup = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guard-launch")
        self._fan = None
        self._mounts = None
        self._mon: ProcessMonitor | None = None
        # pid -> file key of its last allowed exec: the kernel's own open that follows
        self._recent_exec: dict[int, tuple[int, ...]] = {}
        self.stats = {"decisions": 0, "denied": 0, "allowed": 0, "timeouts": 0, "cached": 0}

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        if self.requested == "off" or not self.roots:
            self.backend, self.why = "off", "launch control is off"
            return
        if self.requested in ("auto", "fanotify"):
            from ..sources import fanotify
            ok, why = fanotify.available()
            if ok:
                self._fan = fanotify.FanotifyGuard(self._quick, self._decide_fan, self._report,
                                                   self.deadline_s, self.fail_closed)
                self._fan.confine = self.roots          # no mark ever lands outside them
                mounts = fanotify.mount_points()
                for root in self.roots:
                    self._fan.mark_tree(root, self.exclude, mounts)
                # A mount made under a watched folder later (a USB stick, a tmpfs) is not
                # under the folder marks: the mount watch gives it a mount mark. It starts
                # watching before the first pass, so no mount falls in between.
                self._mounts = fanotify.MountWatch(self._mounts_changed)
                self._fan.mark_mounts(self.roots)
                self._fan.start()
                self._mounts.start()
                self.backend, self.why = "fanotify", why
                return
            if self.requested == "fanotify":
                self.why = f"fanotify unavailable ({why}); using the portable monitor"
            else:
                self.why = f"fanotify unavailable ({why})"
        self._mon = ProcessMonitor(self.roots, self._on_launch, self.poll_s)
        self._mon.start()
        self.backend = "monitor"

    def stop(self) -> None:
        if self._mounts is not None:
            self._mounts.stop()
            self._mounts = None
        if self._fan is not None:
            self._fan.close()          # the kernel allows anything still pending
            self._fan = None
        if self._mon is not None:
            self._mon.stop()
            self._mon = None
        self._followup.shutdown(wait=True, cancel_futures=False)

    def mark_folder(self, folder: str) -> None:
        """A new folder appeared under a watched one: put it under launch control too."""
        if self._fan is not None:
            self._fan.mark_tree(folder, self.exclude)

    def _mounts_changed(self) -> None:
        fan = self._fan
        if fan is not None:
            fan.mark_mounts(self.roots)

    def guard_file(self, path: str) -> bool:
        """Keep launch control on a file judged malicious that stays where it is (monitor
        mode, break-glass, a failed move), also once it is moved out of the watched
        folders: fanotify marks the file itself; the portable monitor knows it by device
        and inode."""
        if self._fan is not None:
            return self._fan.mark_file(path)
        if self._mon is not None and len(self._mon.guarded) < 10_000:
            return self._mon.guard(path)
        return False

    def allowlist_changed(self) -> None:
        with self._cache_lock:
            self._cache.clear()
        self._recent_exec.clear()

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.backend, "why": self.why, **self.stats}
        if self._fan is not None:
            out["fanotify"] = dict(self._fan.stats)
            out["marked_folders"] = len(self._fan.marked)
            out["marked_mounts"] = len(self._fan.marked_mounts)
            out["guarded_files"] = len(self._fan.marked_files)
        elif self._mon is not None:
            out["guarded_files"] = len(self._mon.guarded)
        return out

    # --- shared policy -------------------------------------------------------------------
    def _policy(self, path: str, fd: int | None, st: os.stat_result) -> LaunchDecision:
        """Allowlist, mode and break-glass for one launch of *path* (read through *fd*)."""
        if any(under(path, [r]) for r in self.own):
            return LaunchDecision(True, "exempt", "the guard's own files")
        if self.break_glass():
            return LaunchDecision(True, "break-glass", "break-glass: monitor mode in force")
        sha256 = _hash(fd, path)
        signers: tuple[str, ...] = ()
        current = self.allowlist.current
        if getattr(current, "has_signers", True) and any(
                getattr(e, "kind", "") == "signer" for e in getattr(current, "entries", ())):
            signers = _signers(fd, path)
        entry = current.match(sha256, path, signers, _dt.date.today())
        # A verdict can change the answer only for a path-glob entry: only then may a scan
        # (a first launch, a parser worker starting) hold the launch. Otherwise the known
        # verdict, if any, is used and a missing one is worked out for the record after
        # the answer went out.
        verdict, later = None, False
        if self.verdict_of is not None:
            needed = entry is not None and entry.kind == "path"
            verdict = self.verdict_of(path, st, sha256, scan=needed)
            later = verdict is None and not needed
        info = {"sha256": sha256, "identity": FileIdentity.of(st), "path": path,
                "verdict": verdict}
        if later:
            info["_verdict_later"] = st
        malicious = bool(verdict) and verdict.get("level") == "malicious"
        overridden = ""
        if entry is not None and entry.kind == "path" and malicious:
            # A path glob approves a place, not a content: what sits there and was judged
            # malicious is not approved by it. Hash and signer entries name the content.
            overridden = (f"allowlist entry {entry.index + 1} (line {entry.line}) allows the "
                          "path, but the file was judged malicious")
            entry = None
        if entry is not None:
            where = f"allowlist entry {entry.index + 1} (line {entry.line})"
            return LaunchDecision(True, "decided", where, where, info)
        why = overridden or ("judged malicious and not on the allowlist" if malicious
                             else "not on the allowlist")
        if self.mode() == "enforce":
            return LaunchDecision(False, "decided", f"{why}, enforce mode", info=info)
        return LaunchDecision(True, "decided", f"{why}, monitor mode (would deny)", info=info)

    # --- fanotify --------------------------------------------------------------------------
    def _quick(self, ev):
        """On the reader thread: answer what needs no file read. Cheapest checks first,
        since every exec in a watched folder pays for this path."""
        from ..sources.fanotify import Answer
        if ev.pid == self.pid:
            return Answer(True, "exempt", "the guard itself")
        try:
            st = os.fstat(ev.fd)
        except OSError:
            return None
        key = FileIdentity.of(st)
        if not ev.is_exec and self._recent_exec.get(ev.pid) == key:
            # the open the kernel makes for the exec it just asked us about
            return Answer(True, "exempt", "same exec")
        if ev.is_exec:
            with self._cache_lock:
                hit = self._cache.get(key)
            if hit is not None and hit.allow:
                self._remember_exec(ev.pid, key)
                self.stats["cached"] += 1
                return Answer(True, "cache", hit.because)
        if not ev.is_exec:
            # An open, not an exec: it matters only when an interpreter opens the script
            # it was started with (`sh ./x.sh`, `python x.py`).
            exe = _readlink(f"/proc/{ev.pid}/exe")
            if not interpreter_name(exe):
                return Answer(True, "exempt", "not a launch")
            cmdline = _cmdline(ev.pid)
            cwd = _readlink(f"/proc/{ev.pid}/cwd")
            path = ev.path()
            # is this file the script the interpreter was started with?
            if not cmdline or launch_target("", cmdline, cwd, (path,)) != path:
                return Answer(True, "exempt", "not a launch")
        if _ppid(ev.pid) == self.pid:
            return Answer(True, "exempt", "the guard's own child")
        # Only a refusal is taken from the cache here: an allow was taken above for an exec,
        # and is never taken for an interpreter's open of its script. A script can be
        # rewritten through a shared writable mapping without any timestamp changing
        # (unlike a program: a writable mapping makes its exec fail), so the key can
        # still match while the content does not: its content is hashed at every run.
        with self._cache_lock:
            hit = self._cache.get(key)
        if hit is not None and not hit.allow:
            self.stats["cached"] += 1
            # a refusal is logged: with this file's path (the decision may have been made
            # for another name of it) and the process, read while it still waits
            return Answer(False, "cache", hit.because, (hit, _process_fields(ev.pid),
                                                        ev.path()))
        return None

    def _remember_exec(self, pid: int, key: tuple[int, ...]) -> None:
        self._recent_exec[pid] = key
        if len(self._recent_exec) > 1024:
            self._recent_exec.pop(next(iter(self._recent_exec)))

    def _decide_fan(self, ev):
        from ..sources.fanotify import Answer
        if self.test_delay_s:
            time.sleep(self.test_delay_s)        # test hook: a deliberately slow decision
        st = os.fstat(ev.fd)
        path = ev.path()
        # A file open for writing (or mapped writable) somewhere may change after the
        # read without its timestamps changing: decided for this launch only. Asked
        # before the read: a writer who comes after it changes the timestamps.
        writable = open_for_writing(ev.fd)
        d = self._policy(path, ev.fd, st)
        self.stats["decisions"] += 1
        lasting = d.how == "decided" and not writable
        if lasting:
            with self._cache_lock:
                self._cache[FileIdentity.of(st)] = d
        proc = _process_fields(ev.pid)
        if d.allow and ev.is_exec and lasting:
            self._remember_exec(ev.pid, FileIdentity.of(st))
        return Answer(d.allow, d.how, d.because, (d, proc, path))

    def _report(self, ev, ans, latency_s: float) -> None:
        """After the answer went out (the event's fd is still open): hand the record, and
        a denial's follow-up, over. What the deciding side saw comes with the answer, so
        a late decision can never lend its file to another event's record."""
        if ans.how in ("exempt",):
            return
        if ans.how == "cache" and ans.allow:
            return                                  # repeated allowed launches: no noise
        d, proc, path = ans.detail if ans.detail is not None else (None, None, "")
        if proc is None:
            proc = _process_fields(ev.pid)
        if not path:
            path = ev.path()
        if ans.how in ("fail-open", "fail-closed"):
            self.stats["timeouts"] += 1
        self._account(ans.allow)
        record = {"allow": ans.allow, "how": ans.how, "because": ans.because,
                  "entry": d.entry if d else "", "process": proc, "path": path,
                  "info": d.info if d else {}, "latency_ms": round(latency_s * 1000, 3),
                  "backend": "fanotify", "mode": self.mode()}
        self._followup.submit(self._follow_up, record)

    # --- portable monitor ----------------------------------------------------------------
    def _on_launch(self, launch: Launch) -> None:
        try:
            fd = os.open(launch.target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        try:
            st = os.fstat(fd)
            with self._cache_lock:
                d = self._cache.get(FileIdentity.of(st))
            how_cached = d is not None
            if d is None:
                writable = open_for_writing(fd)
                d = self._policy(launch.target, fd, st)
                if d.how == "decided" and not writable:
                    with self._cache_lock:
                        self._cache[FileIdentity.of(st)] = d
        finally:
            os.close(fd)
        outcome = ""
        if not d.allow:
            outcome = stop_process(launch)
        elif how_cached and not d.info.get("sha256"):
            return
        self._account(d.allow)
        record = {"allow": d.allow, "how": "cache" if how_cached else d.how,
                  "because": d.because, "entry": d.entry, "path": launch.target,
                  "process": launch.process_fields(), "info": d.info, "outcome": outcome,
                  "latency_ms": round((time.monotonic() - launch.seen_at) * 1000, 3),
                  "backend": "monitor", "mode": self.mode()}
        if d.allow and how_cached:
            return
        self._followup.submit(self._follow_up, record)

    # --- follow-up (never on the answering path) -------------------------------------------
    def _account(self, allow: bool) -> None:
        self.stats["allowed" if allow else "denied"] += 1

    def _follow_up(self, record: dict[str, Any]) -> None:
        try:
            info = record.get("info") or {}
            st = info.pop("_verdict_later", None)
            if st is not None and self.verdict_of is not None:
                info["verdict"] = self.verdict_of(info["path"], st, info["sha256"], scan=True)
            self.on_event(record)
            if not record["allow"]:
                self.on_denied(record)
        except Exception:
            pass


def _hash(fd: int | None, path: str) -> str:
    own = fd is None
    if own:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return sha256_fd(fd)[0]
    finally:
        if own:
            os.close(fd)


def _signers(fd: int | None, path: str) -> tuple[str, ...]:
    try:
        from ..identify.signer import signers_of
        from ..identify.filetype import exact_kind
        data = os.pread(fd, 64 << 20, 0) if fd is not None else Path(path).read_bytes()
        kind = exact_kind(data[:4096], data[-512:])[0]
        if kind not in ("pe", "macho", "macho-fat"):
            return ()
        info = signers_of(data, kind)
        return tuple(info.names) if info.verified else ()
    except Exception:
        return ()


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read(65536)
    except OSError:
        return []
    return [os.fsdecode(a) for a in raw.split(b"\0") if a]


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read(1024)
        return int(stat[stat.rindex(b")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def _process_fields(pid: int) -> dict[str, Any]:
    """ECS process.* for a (still blocked) process, read from /proc."""
    cmd = _cmdline(pid)
    exe = _readlink(f"/proc/{pid}/exe")
    return {"pid": pid, "executable": exe, "name": os.path.basename(exe),
            "command_line": " ".join(cmd)[:4096], "args": cmd[:64],
            "parent": {"pid": _ppid(pid)}}
