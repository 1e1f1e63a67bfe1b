"""sha256 of a file's content: one streaming routine for the scanner, launch control and
the CLI, and a helper thread to hash beside other work on the same bytes.

hashlib releases the GIL while it hashes a buffer of more than 2 KiB, and so do YARA,
the XOR in the vault and file writes: hashing beside them costs wall time only when the
other core is busy.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from typing import Callable

CHUNK_BYTES = 1 << 20


def sha256_fd(fd: int, *, on_chunk: Callable[[bytes], None] | None = None,
              stop: Callable[[], bool] | None = None) -> tuple[str, int]:
    """(sha256 hex digest, bytes read) of everything in the file behind *fd*, from its
    first byte to its end, with no size limit: a digest that is cut short could never
    match an allowlist entry. Reads with pread (the descriptor's offset is left alone).

    *on_chunk* sees every chunk in order (the scanner keeps the head and tail); *stop*,
    asked before each chunk, ends the read early when it says so (a writer is waiting):
    the digest then covers only the bytes read, which the caller must compare with the
    size. Raises OSError.
    """
    h = hashlib.sha256()
    offset = 0
    while stop is None or not stop():
        chunk = os.pread(fd, CHUNK_BYTES, offset)
        if not chunk:
            break
        h.update(chunk)
        offset += len(chunk)
        if on_chunk is not None:
            on_chunk(chunk)
    return h.hexdigest(), offset


class BackgroundSha256:
    """feed() chunks in order; hexdigest() waits for the helper and returns the digest.

    The helper thread exits after hexdigest() (or close()); a hasher is used once.
    """

    __slots__ = ("_chunks", "_hash", "_thread", "_digest")

    def __init__(self, first: bytes | None = None):
        self._chunks: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._hash = hashlib.sha256()
        self._digest: str | None = None
        self._thread = threading.Thread(target=self._run, name="guard-hash", daemon=True)
        self._thread.start()
        if first:
            self.feed(first)

    def _run(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            self._hash.update(chunk)

    def feed(self, chunk: bytes) -> None:
        self._chunks.put(chunk)

    def hexdigest(self) -> str:
        if self._digest is None:
            self._chunks.put(None)
            self._thread.join()
            self._digest = self._hash.hexdigest()
        return self._digest

    close = hexdigest
