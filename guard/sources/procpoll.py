"""Portable launch monitor: psutil polls for new processes (macOS, Windows, and Linux
without fanotify).

A new process whose executable, or whose script argument for a known interpreter, lives
under a watched folder is handed to ``on_launch``; nothing else is ever touched. The
process is identified by (pid, create_time), so a recycled PID is never mistaken for it.
"""

from __future__ import annotations

import os
import re
import threading
import time
from typing import Callable, Iterable

import psutil

from ..events import Launch

INTERPRETERS = frozenset("""sh bash dash zsh ksh csh tcsh fish python python2 python3 pythonw
    perl ruby node nodejs deno bun php pwsh powershell wscript cscript mshta osascript
    java javaw lua tclsh""".split())


# The dynamic loader runs the program named by its first operand
# (`/lib64/ld-linux-x86-64.so.2 ./prog`): the program is opened and mapped, not exec'd.
_LOADER = re.compile(r"ld(-linux[-\w]*|64|-musl-\w+)?\.so(\.\d+)*")


def interpreter_name(name: str) -> str:
    """'python3.11' -> 'python3', 'bash.exe' -> 'bash', 'ld-linux-x86-64.so.2' -> 'ld.so',
    else '' when not an interpreter."""
    base = os.path.basename(name).lower().removesuffix(".exe")
    if _LOADER.fullmatch(base):
        return "ld.so"
    if base in INTERPRETERS:
        return base
    stripped = base.rstrip("0123456789.")
    if stripped in INTERPRETERS or stripped + "3" in INTERPRETERS:
        return stripped
    return ""


def under(path: str, roots: Iterable[str]) -> bool:
    path = os.path.normpath(path)
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def launch_target(exe: str, cmdline: list[str], cwd: str, roots: Iterable[str]) -> str:
    """The watched file this process runs: its executable, or an interpreter's script."""
    roots = tuple(os.path.normpath(r) for r in roots)
    if exe and under(exe, roots):
        return exe
    if interpreter_name(exe) or (cmdline and interpreter_name(cmdline[0])):
        script = script_argument(cmdline)
        if script:
            full = script if os.path.isabs(script) else os.path.join(cwd or "/", script)
            if under(full, roots):
                return os.path.normpath(full)
    return ""


# Per interpreter family: options after which there is no script file (code inline or
# from a module), and options that take the next argument as their value.
_SH = (frozenset({"-c"}), frozenset({"-o", "-O", "+o", "+O"}))
_OPTIONS = {
    **dict.fromkeys(("sh", "bash", "dash", "zsh", "ksh", "csh", "tcsh", "fish"), _SH),
    **dict.fromkeys(("python", "python2", "python3", "pythonw"),
                    (frozenset({"-c", "-m"}), frozenset({"-W", "-X"}))),
    **dict.fromkeys(("perl", "ruby"), (frozenset({"-e", "-E"}), frozenset({"-I", "-r"}))),
    **dict.fromkeys(("node", "nodejs", "deno", "bun"),
                    (frozenset({"-e", "--eval", "-p", "--print"}),
                     frozenset({"-r", "--require", "--import", "--loader", "--input-type"}))),
    # glibc and musl: --list and --verify map the program too, so they still name it
    "ld.so": (frozenset(), frozenset({"--library-path", "--inhibit-rpath", "--audit",
                                      "--preload", "--argv0", "--glibc-hwcaps-prepend",
                                      "--glibc-hwcaps-mask"})),
}
_DEFAULT_OPTIONS = (frozenset({"-c", "-e", "-m", "-Command", "-command", "-EncodedCommand"}),
                    frozenset())


def script_argument(cmdline: list[str] | tuple[str, ...]) -> str:
    """The script an interpreter was started with: its first operand, if any.

    `sh x.sh a b` -> x.sh; `python -m pkg x` and `sh -c '...' x` -> '' (no script file:
    the files after are arguments, opened as data).
    """
    if not cmdline:
        return ""
    no_script, takes_value = _OPTIONS.get(interpreter_name(cmdline[0]), _DEFAULT_OPTIONS)
    args = list(cmdline[1:])
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return args[i + 1] if i + 1 < len(args) else ""
        if arg in no_script:
            return ""
        if arg in takes_value:
            i += 2
            continue
        if arg.startswith("-") and arg != "-":
            i += 1
            continue
        return arg if arg != "-" else ""
    return ""


class ProcessMonitor:
    def __init__(self, roots: Iterable[str], on_launch: Callable[[Launch], None],
                 interval_s: float = 0.1):
        self.roots = tuple(os.path.normpath(os.path.realpath(r)) for r in roots)
        self.on_launch = on_launch
        self.interval_s = interval_s
        self._known: set[tuple[int, float]] = set()
        self.guarded: set[tuple[int, int]] = set()   # (dev, ino) of files judged malicious
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0
        self.on_error: Callable[[str], None] | None = None   # told of each failed poll

    def start(self) -> None:
        self._known = self._snapshot()         # what ran before us is not a new launch
        self._thread = threading.Thread(target=self._loop, name="guard-procpoll", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @staticmethod
    def _snapshot() -> set[tuple[int, float]]:
        out = set()
        for p in psutil.process_iter(["create_time"]):
            ct = p.info.get("create_time")
            if ct is not None:
                out.add((p.pid, ct))
        return out

    def poll_once(self) -> list[Launch]:
        found = []
        current = set()
        me = os.getpid()
        for p in psutil.process_iter(["create_time"]):
            ct = p.info.get("create_time")
            if ct is None:
                continue
            key = (p.pid, ct)
            current.add(key)
            if key in self._known or p.pid == me:
                continue
            try:
                with p.oneshot():
                    if p.ppid() == me:
                        continue
                    exe = p.exe()
                    cmdline = p.cmdline()
                    cwd = p.cwd() if cmdline and interpreter_name(cmdline[0] or exe) else ""
                    target = launch_target(exe, cmdline, cwd, self.roots)
                    if not target and self.guarded:
                        target = self._guarded_target(exe, cmdline, p)
                    if target:
                        found.append(Launch(p.pid, ct, target, exe, tuple(cmdline), p.ppid(),
                                            p.name(), time.monotonic(), _uid_of(p)))
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        self._known = current
        return found

    def guard(self, path: str) -> bool:
        """Watch launches of this file wherever it is moved on its file system."""
        try:
            st = os.stat(path)
        except OSError:
            return False
        self.guarded.add((st.st_dev, st.st_ino))
        return True

    def _guarded_target(self, exe: str, cmdline: list[str], p: psutil.Process) -> str:
        """The process's program, or an interpreter's script, when it is a guarded file."""
        candidates = [exe] if exe else []
        if cmdline and (interpreter_name(exe) or interpreter_name(cmdline[0])):
            script = script_argument(cmdline)
            if script:
                candidates.append(script if os.path.isabs(script)
                                  else os.path.join(p.cwd() or "/", script))
        for path in candidates:
            try:
                st = os.stat(path)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in self.guarded:
                return os.path.normpath(path)
        return ""

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                for launch in self.poll_once():
                    self.on_launch(launch)
            except Exception as exc:  # noqa: BLE001 - one bad poll must not end the monitor
                self.errors += 1
                if self.on_error is not None:
                    self.on_error(f"process poll failed: {type(exc).__name__}: {exc}")
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))


def _uid_of(p: psutil.Process) -> int | None:
    """The real user id of *p* (None where the OS has none: Windows)."""
    uids = getattr(p, "uids", None)
    return uids().real if uids is not None else None
