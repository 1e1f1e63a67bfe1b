"""Files written whole or not at all; read leases, to read files no one is writing."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import tempfile
from pathlib import Path
from typing import Callable

try:
    import fcntl
except ImportError:                  # Windows: no leases
    fcntl = None  # type: ignore[assignment]

# Read leases (Linux): a writer that opens the file while it is read breaks the lease. Its
# break is signalled with SIGURG, whose default action is to ignore it (SIGIO would kill).
LEASE_HELD, LEASE_WRITER, LEASE_UNAVAILABLE = "held", "writer", "unavailable"
_LEASE_SIGNAL = getattr(signal, "SIGURG", 0)


def write_atomic(path: Path, data: bytes, *, mode: int, uid: int | None = None,
                 gid: int | None = None, suffix: str = ".tmp",
                 check: Callable[[], None] | None = None) -> None:
    """Write *data* to a temporary file beside *path*, set *mode* (and *uid*/*gid* where
    permitted), fsync it, call *check* (which may raise to abort: nothing is written),
    rename it over *path* (a link there is replaced, never followed) and fsync the folder.

    A reader sees the old content or the new, never a part. Raises OSError (or what
    *check* raises); the temporary file never stays behind.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if hasattr(os, "fchmod"):
                os.fchmod(fh.fileno(), mode)
            if (uid is not None or gid is not None) and hasattr(os, "fchown"):
                with contextlib.suppress(PermissionError):
                    os.fchown(fh.fileno(), -1 if uid is None else uid,
                              -1 if gid is None else gid)
            os.fsync(fh.fileno())
        if check is not None:
            check()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def take_read_lease(fd: int) -> str:
    """Take a read lease on *fd* (a file opened for reading): LEASE_HELD; LEASE_WRITER
    when the file is open for writing (or mapped writable) somewhere, so that its content
    may be half rewritten; LEASE_UNAVAILABLE where leases cannot be had (not the owner
    and no CAP_LEASE, a file system without them, not Linux). While it is held, a
    writer's open waits until it is released."""
    setlease = getattr(fcntl, "F_SETLEASE", None)
    setsig = getattr(fcntl, "F_SETSIG", None)
    if setlease is None or setsig is None or not _LEASE_SIGNAL:
        return LEASE_UNAVAILABLE
    try:
        fcntl.fcntl(fd, setsig, _LEASE_SIGNAL)
        fcntl.fcntl(fd, setlease, fcntl.F_RDLCK)
    except OSError as exc:
        return LEASE_WRITER if exc.errno == errno.EAGAIN else LEASE_UNAVAILABLE
    return LEASE_HELD


def lease_broken(fd: int) -> bool:
    """A writer asked to open the file since the lease was taken (or it is gone)."""
    try:
        return fcntl.fcntl(fd, fcntl.F_GETLEASE) != fcntl.F_RDLCK
    except OSError:
        return True


def release_lease(fd: int) -> None:
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    except OSError:
        pass                                    # closing the descriptor releases it too


def open_for_writing(fd: int) -> bool:
    """Whether the file behind *fd* (open for reading) is open for writing or mapped
    writable by anyone: a read lease, taken and given back at once, cannot be had then.
    False where leases are not available."""
    lease = take_read_lease(fd)
    if lease == LEASE_HELD:
        release_lease(fd)
    return lease == LEASE_WRITER
