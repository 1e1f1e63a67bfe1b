"""The agent's inputs: immutable events the sources emit and the rooms pass along.

``FileEvent``: a file in a watched folder is ready to be judged. ``Launch``: a process the
portable monitor saw start a file under a watched folder. ``ProcessInfo``: who launched
something (the ECS ``process.*`` of an exec record). Events never carry judgement.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import WatchFolder
from .verdict import Trigger


@dataclass(frozen=True)
class FileEvent:
    """A file that is complete and should be judged (again: *attempt* > 0)."""

    path: Path
    folder: WatchFolder
    trigger: Trigger
    attempt: int = 0


@dataclass(frozen=True)
class ProcessInfo:
    """A process as the audit log shows it (ECS ``process.*``)."""

    pid: int
    executable: str = ""
    name: str = ""
    args: tuple[str, ...] = ()
    ppid: int = -1
    parent_executable: str = ""
    uid: int | None = None

    @classmethod
    def read(cls, pid: int) -> "ProcessInfo":
        """From /proc, for a process that still exists (one waiting for our answer)."""
        args = tuple(read_cmdline(pid))
        exe = read_link(f"/proc/{pid}/exe")
        ppid = parent_pid(pid)
        return cls(pid, exe, os.path.basename(exe), args, ppid,
                   read_link(f"/proc/{ppid}/exe") if ppid > 0 else "", _uid(pid))

    def to_ecs(self) -> dict[str, Any]:
        parent: dict[str, Any] = {"pid": self.ppid}
        if self.parent_executable:
            parent["executable"] = self.parent_executable
        return {"pid": self.pid, "executable": self.executable, "name": self.name,
                "command_line": " ".join(self.args)[:4096], "args": list(self.args[:64]),
                "parent": parent}


@dataclass(frozen=True)
class Launch:
    """A new process the portable monitor saw, which runs *target* (a file under a
    watched folder: its program, or an interpreter's script). Identified by pid and
    create time, so a recycled pid is never taken for it."""

    pid: int
    create_time: float
    target: str            # the file under a watched folder that runs
    exe: str
    cmdline: tuple[str, ...]
    ppid: int
    name: str
    seen_at: float         # time.monotonic() when the poll saw it
    uid: int | None = field(default=None, compare=False)

    @property
    def process(self) -> ProcessInfo:
        return ProcessInfo(self.pid, self.exe, self.name, self.cmdline, self.ppid,
                           read_link(f"/proc/{self.ppid}/exe") if self.ppid > 0 else "",
                           self.uid)

    def process_fields(self) -> dict[str, Any]:
        """ECS process.* for the audit log."""
        return self.process.to_ecs()


def read_link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def read_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read(65536)
    except OSError:
        return []
    return [os.fsdecode(a) for a in raw.split(b"\0") if a]


def parent_pid(pid: int) -> int:
    """The parent of *pid* from /proc (-1 when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read(1024)
        return int(stat[stat.rindex(b")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def _uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None
