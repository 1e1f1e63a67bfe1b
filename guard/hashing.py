"""sha256 on a helper thread, beside other work on the same bytes.

hashlib releases the GIL while it hashes a buffer of more than 2 KiB, and so do YARA,
the XOR in the vault and file writes: hashing beside them costs wall time only when the
other core is busy.
"""

from __future__ import annotations

import hashlib
import queue
import threading


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
