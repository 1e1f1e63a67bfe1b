"""Files written whole or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable


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
