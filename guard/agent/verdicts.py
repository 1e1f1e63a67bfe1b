"""What the agent remembers of the files it judged: which files are unchanged since their
scan (so they are not scanned again), and the flagged verdicts launch control asks for."""

from __future__ import annotations

import threading

from ..verdict import FileIdentity, Level, Verdict, VerdictSummary

_FLAGGED_MAX = 1024        # recent flagged verdicts by file and content, for launches
_SEEN_MAX = 200_000        # files remembered as scanned and unchanged


class VerdictMemory:
    """Flagged verdicts by file and content (device, inode, sha256), oldest first.

    By content, not by timestamps: a rewrite with the mtime put back, or through a
    writable mapping (no timestamp changes at all), does not inherit the old content's
    verdict, and a rename or a new hard link (which change the ctime) does not lose it.
    Only flagged verdicts are kept (a clean file that is launched is scanned again then:
    rare, and it keeps this small). Safe from any thread.
    """

    def __init__(self, max_items: int = _FLAGGED_MAX):
        self.max_items = max_items
        self._items: dict[tuple[int, int, str], VerdictSummary] = {}
        self._lock = threading.Lock()

    def remember(self, verdict: Verdict) -> None:
        if verdict.identity is None or not verdict.flagged or not verdict.sha256:
            return
        key = (*verdict.identity.inode, verdict.sha256)
        summary = VerdictSummary.of(verdict)
        with self._lock:
            known = self._items.pop(key, None)
            # The worst verdict a file earned stays with it: a disguise judged malicious
            # under its first name is not laundered by a rename or a second hard link.
            if known is not None and known.level.rank > verdict.level.rank:
                summary = known
            self._items[key] = summary
            while len(self._items) > self.max_items:
                del self._items[next(iter(self._items))]

    def lookup(self, identity: FileIdentity, sha256: str) -> VerdictSummary | None:
        with self._lock:
            return self._items.get((*identity.inode, sha256))

    def is_malicious(self, identity: FileIdentity, sha256: str) -> bool:
        known = self.lookup(identity, sha256)
        return known is not None and known.level is Level.MALICIOUS


class ScannedFiles:
    """Which paths were scanned, as what file (their FileIdentity): an unchanged file is
    not scanned twice. Two machine words a file (hashes, not the path and the identity):
    the agent's RSS after a burst of 10,000 files. Oldest first, bounded. Thread-safe."""

    def __init__(self, max_items: int = _SEEN_MAX):
        self.max_items = max_items
        self._items: dict[int, int] = {}
        self._lock = threading.Lock()

    def unchanged(self, path: str, identity: FileIdentity) -> bool:
        with self._lock:
            return self._items.get(hash(path)) == hash(identity)

    def scanned(self, path: str, identity: FileIdentity | None) -> None:
        """*path* was judged as *identity*; None: its scan failed, so it is not done and
        the next event or sweep must try again, even if nothing changes."""
        key = hash(path)
        with self._lock:
            self._items.pop(key, None)            # re-insert: now the newest
            if identity is not None:
                self._items[key] = hash(identity)
            while len(self._items) > self.max_items:
                del self._items[next(iter(self._items))]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
