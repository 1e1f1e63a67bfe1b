"""Launch control's memory of its answers: the decision for a file, unchanged since
(FileIdentity: device, inode, size, mtime, ctime), and which process just had its exec
allowed (the kernel opens the file once more for that exec). Emptied for a named reason.
"""

from __future__ import annotations

import threading

from ..verdict import ExecDecision, ExecTarget, FileIdentity, FlushReason

_DECISIONS_MAX = 16_384
_RECENT_EXECS_MAX = 1024


class DecisionCache:
    """Thread-safe. ``get`` is on the fanotify reader's path: a dict lookup under a lock."""

    def __init__(self, max_items: int = _DECISIONS_MAX):
        self.max_items = max_items
        # the decision and the file it was made for (its path and hash go into the record
        # of a refusal answered from here)
        self._decisions: dict[FileIdentity, tuple[ExecDecision, ExecTarget | None]] = {}
        self._recent_exec: dict[int, FileIdentity] = {}
        self._lock = threading.Lock()
        self.flushes: dict[str, int] = {}

    def get(self, identity: FileIdentity) -> tuple[ExecDecision, ExecTarget | None] | None:
        with self._lock:
            return self._decisions.get(identity)

    def put(self, identity: FileIdentity, decision: ExecDecision,
            target: ExecTarget | None = None) -> None:
        """Keep a lasting decision; a full cache is emptied (reason FULL), not trimmed:
        a file's decision is made again from its content, so nothing is lost but time."""
        if not decision.lasting:
            return
        with self._lock:
            if len(self._decisions) >= self.max_items:
                self._flush_locked(FlushReason.FULL)
            self._decisions[identity] = (decision, target)

    def allowed_exec(self, pid: int, identity: FileIdentity) -> None:
        """*pid*'s exec of *identity* was allowed: the open the kernel makes for that exec
        right after is the same launch, not another."""
        with self._lock:
            self._recent_exec[pid] = identity
            if len(self._recent_exec) > _RECENT_EXECS_MAX:
                self._recent_exec.pop(next(iter(self._recent_exec)))

    def same_exec(self, pid: int, identity: FileIdentity) -> bool:
        with self._lock:
            return self._recent_exec.get(pid) == identity

    def flush(self, reason: FlushReason) -> None:
        with self._lock:
            self._flush_locked(reason)

    def _flush_locked(self, reason: FlushReason) -> None:
        self._decisions.clear()
        self._recent_exec.clear()
        self.flushes[reason.value] = self.flushes.get(reason.value, 0) + 1

    def __len__(self) -> int:
        return len(self._decisions)
