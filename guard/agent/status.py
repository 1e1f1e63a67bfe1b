"""``state_dir/status.json``: what the running agent shows ``guard status`` and ``guard
doctor``. Written by the agent, read by the commands (which must not load the scanner)."""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from typing import Any

from .. import __version__
from ..config import Config
from ..verdict import Problem


def parser_status(scanner: Any) -> dict[str, Any]:
    """The parser workers' part of the status (``parsers``)."""
    budget = getattr(scanner, "budget", None)
    if budget is None:
        return {"isolated": False}
    return {"isolated": True, "workers_started": scanner.started,
            "failures": scanner.failures, "idle_workers": scanner.worker_pids(),
            "unavailable": scanner.unavailable, "worker_user": scanner.worker_user,
            "budget": {"cpu_s": budget.cpu_s, "memory_mb": budget.memory_mb,
                       "wall_s": budget.wall_s}}


def render_status(parts: Any, state: str) -> dict[str, Any]:
    """The status document of the agent built from *parts* (``agent.parts.Parts``)."""
    config = parts.config
    return {"state": state, "pid": os.getpid(), "version": __version__,
            "mode": config.mode.value, "config": config.source,
            "started_at": parts.started_at, "updated_at": time.time(),
            "watched": [{"path": str(w.path), "source": w.source}
                        for w in parts.watcher.watching],
            "not_watched": list(parts.watcher.errors),
            "queue_depth": parts.pipeline.depth, "meeting": parts.meeting.active,
            "counters": parts.counters.to_dict(), "problems": parts.problems.to_dict(),
            "last_error": parts.problems.last_error,
            "rule_errors": parts.rule_errors, "quarantine_dir": str(config.quarantine_dir),
            "log_file": str(config.log_file),
            "effective_mode": parts.mode.effective().value,
            "break_glass": parts.mode.break_glass_on(),
            "launch_control": parts.launch.status(),
            "allowlist": {"path": str(config.allowlist),
                          "entries": len(parts.allowlist.current.entries),
                          "error": str(parts.allowlist.error or ""),
                          "pull": parts.puller.status() if parts.puller else None},
            "syslog": parts.forwarder.status() if parts.forwarder else None,
            "parsers": parser_status(parts.scanner)}


def status_token(parts: Any) -> tuple:
    """What status.json shows that can change, cheap to compare once a second."""
    return (tuple(parts.counters.to_dict().values()), parts.pipeline.depth,
            parts.meeting.active, parts.problems.last_error, parts.mode.break_glass_on(),
            parts.config.mode, id(parts.allowlist.current), str(parts.allowlist.error or ""),
            tuple(parts.launch.stats.values()), len(parts.watcher.watching),
            len(parts.watcher.errors), len(parts.rule_errors))


class StatusFile:
    """Writes status.json whole (a reader never sees a part). Several threads write it
    (the housekeeper, start, stop, reload): one at a time."""

    def __init__(self, parts: Any):
        self.parts = parts
        self._lock = threading.Lock()
        self._written = 0.0
        self._last: tuple = ()

    def write(self, state: str) -> None:
        parts = self.parts
        path = parts.config.state_dir / "status.json"
        tmp = path.with_name(f".status.{os.getpid()}.tmp")
        with self._lock:
            try:
                tmp.write_text(json.dumps(render_status(parts, state), indent=1))
                os.replace(tmp, path)
            except OSError as exc:
                parts.problems.report(Problem.STATUS, f"status file: {exc}")

    def maybe_write(self, heartbeat_s: float) -> bool:
        """Rewrite status.json when something changed (returns True), else every
        *heartbeat_s* as a heartbeat."""
        token = status_token(self.parts)
        changed = token != self._last
        if changed or time.monotonic() - self._written >= heartbeat_s:
            self._last = token
            self._written = time.monotonic()
            self.write("running")
        return changed


def read_status(config: Config) -> dict[str, Any] | None:
    """The running agent's status, or None when none runs with this config."""
    path = config.state_dir / "status.json"
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    lock = config.state_dir / "guard.lock"
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None                       # nobody holds the lock: no agent
    except BlockingIOError:
        return status
    finally:
        os.close(fd)
