"""The hostile world of the vault cases: an employee's folders, a canary, an attacker.

The employee (uid ``USER``) owns their home and the watched folder in it, so they may
rename, swap and link anything there; the agent (root, this process) quarantines from
it. The canary is a root-owned folder outside the watched one, holding files with the
very names the agent handles: a link that root followed would land on them. Everything
lives in the folder the test created; nothing here touches any other path.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import random
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from guard.actions.quarantine import Vault
from guard.verdict import FileIdentity

USER = 4242                  # the employee: no such account needed, only the number
OTHER = 4343                 # someone else, for canaries owned by neither root nor USER


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Expected:
    """What a scan saw: the file and its content; the vault moves only that."""
    identity: FileIdentity
    sha256: str

    @property
    def dev(self) -> int:
        return self.identity.dev

    @property
    def ino(self) -> int:
        return self.identity.ino

    def args(self) -> tuple[FileIdentity, str]:
        """The arguments Vault.quarantine takes for it."""
        return self.identity, self.sha256


def expected_for(path: Path | str, dir_fd: int | None = None) -> Expected:
    """What a scan of *path* saw (stat without following links, and the content hash)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        h = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
    finally:
        os.close(fd)
    return Expected(FileIdentity.of(st), h.hexdigest())


def write_at(dir_fd: int, name: str, data: bytes, uid: int = USER, mode: int = 0o644) -> None:
    """Create *name* in the folder *dir_fd* (wherever the attacker moved it)."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode,
                 dir_fd=dir_fd)
    try:
        os.write(fd, data)
        os.fchown(fd, uid, uid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def snapshot(top: Path) -> dict[str, tuple]:
    """Every entry below *top* (links not followed): type, mode, owner, size, mtime and
    content hash or link target; folders by mtime, so an entry created or removed in one
    shows too."""
    out: dict[str, tuple] = {}
    st = os.lstat(top)
    out["."] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rec: tuple = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns)
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as fh:
                    rec += (sha256(fh.read()),)
            elif stat.S_ISLNK(st.st_mode):
                rec += (os.readlink(p),)
            out[os.path.relpath(p, top)] = rec
    return out


def diff(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    """What changed between two snapshots, as short words for a failure message."""
    return sorted({f"created {k}" for k in after.keys() - before.keys()} |
                  {f"removed {k}" for k in before.keys() - after.keys()} |
                  {f"changed {k}" for k in before.keys() & after.keys()
                   if before[k] != after[k]})


@dataclass
class World:
    """base/home (USER) / Downloads (watched, USER) / sub (USER); base/canary (root)."""
    base: Path
    vault: Vault

    @property
    def home(self) -> Path:
        return self.base / "home"

    @property
    def root(self) -> Path:
        return self.home / "Downloads"

    @property
    def sub(self) -> Path:
        return self.root / "sub"

    @property
    def canary(self) -> Path:
        return self.base / "canary"

    def canary_snapshot(self) -> dict[str, tuple]:
        return snapshot(self.canary)


CANARY_FILES = {                       # name: (uid, mode, content)
    "evil.bin": (0, 0o644, b"root's evil.bin: a link followed by root lands here\n"),
    "old.bin": (0, 0o600, b"root's old.bin: never to be purged\n"),
    "shadow": (0, 0o600, b"root:$6$canary$notarealhash:19000:0:99999:7:::\n"),
    "setuid-tool": (0, 0o4755, b"#!/bin/sh\necho canary\n"),
    "theirs.txt": (OTHER, 0o640, b"someone else's file\n"),
}


def make_world(base: Path, vault_dir: Path | None = None) -> World:
    """Build the folders in *base* (created here, inside the test's own folder)."""
    home = base / "home"
    (home / "Downloads" / "sub").mkdir(parents=True)
    for d in (home, home / "Downloads", home / "Downloads" / "sub"):
        os.chown(d, USER, USER)
        os.chmod(d, 0o755)
    canary = base / "canary"
    (canary / "sub").mkdir(parents=True)
    for folder in (canary, canary / "sub"):
        os.chmod(folder, 0o755)
        for name, (uid, mode, data) in CANARY_FILES.items():
            p = folder / name
            p.write_bytes(data)
            os.chown(p, uid, uid)
            os.chmod(p, mode)
            os.utime(p, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    return World(base, Vault(vault_dir or base / "vault"))


class Swap:
    """The attacker's move: the entry *name* in the folder *dir_fd* becomes a link to
    *target* (the real entry waits under ``name.real``); undo() puts it back."""

    def __init__(self, dir_fd: int, name: str, target: Path):
        self.dir_fd, self.name, self.target = dir_fd, name, target
        self.aside = name + ".real"

    def do(self) -> None:
        os.rename(self.name, self.aside, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        os.symlink(self.target, self.name, dir_fd=self.dir_fd)

    def undo(self) -> None:
        """Put the real entry back, from whatever state a killed racer left."""
        try:
            st = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                os.unlink(self.name, dir_fd=self.dir_fd)
        except FileNotFoundError:
            pass
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.aside, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)


class Racer:
    """A separate process (real parallelism on the second core, unlike a thread under
    the GIL) that swaps folders for links and back, with random small delays, until
    stopped. Used as a context manager: always killed, waited for and undone.
    ``swaps`` counts the swaps it made; ``died`` says it stopped on its own (an error)."""

    def __init__(self, swaps: list[Swap], max_delay_s: float = 300e-6, seed: int = 0):
        self.plan, self.max_delay_s, self.seed = swaps, max_delay_s, seed
        self.pid = 0
        self.swaps = 0
        self.died = False
        self._count = mmap.mmap(-1, 8)

    def __enter__(self) -> "Racer":
        self.pid = os.fork()
        if self.pid == 0:                                  # the attacker
            try:
                rng = random.Random(self.seed)
                n = 0
                while True:
                    swap = rng.choice(self.plan)
                    swap.do()
                    n += 1
                    self._count[:8] = n.to_bytes(8, "little")
                    time.sleep(rng.random() * self.max_delay_s)
                    swap.undo()
                    time.sleep(rng.random() * self.max_delay_s)
            finally:
                os._exit(1)
        return self

    def __exit__(self, *exc) -> None:
        pid, _ = os.waitpid(self.pid, os.WNOHANG)
        self.died = pid != 0
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        if not self.died:
            os.waitpid(self.pid, 0)
        self.swaps = int.from_bytes(self._count[:8], "little")
        self._count.close()
        for swap in self.plan:
            swap.undo()


CHILD_LIMIT_S = 60.0
HUNG = 99


def run_child(fn, kill_after_s: float | None = None) -> int:
    """Run *fn* in a forked child; returns the wait status's meaning: -signal when the
    child was killed, else its exit code (0: fn returned, 3: fn raised, HUNG: still
    running after CHILD_LIMIT_S, then killed). With *kill_after_s* the parent SIGKILLs
    the child after that long (if still running)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn()
        except BaseException:
            code = 3
        finally:
            os._exit(code)
    if kill_after_s is not None:
        time.sleep(kill_after_s)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + CHILD_LIMIT_S
    while True:                         # never waited for without a limit
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return HUNG
        time.sleep(0.0005)
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


@contextlib.contextmanager
def tmpfs(folder: Path, size: str):
    """A tmpfs of *size* mounted on *folder* (created here), unmounted on the way out."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                    str(folder)], check=True, capture_output=True, timeout=30)
    try:
        yield folder
    finally:
        r = subprocess.run(["umount", str(folder)], capture_output=True, timeout=30)
        if r.returncode != 0:                 # something still open: lazy, never left
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)
