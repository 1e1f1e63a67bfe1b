"""The real agent as a benchmark runs it: ``python -m guard run --config CFG`` in its own
session, stdout and stderr to files, ready once status.json says running after its first
sweep; stopped with SIGTERM, SIGKILL after a grace period. Shared by bench_daemon.py and
bench_launch.py (imported from bench/, where those scripts run)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

STARTUP_S = 60.0
STOP_GRACE_S = 10.0


class BenchError(RuntimeError):
    """A benchmark cannot go on (its report says why)."""


class AgentFailed(BenchError):
    """The agent did not start, or died."""


class Agent:
    def __init__(self, base: Path, config: Path, status_path: Path, tag: str = ""):
        self.base = base
        self.config = config
        self.status_path = status_path
        suffix = f"-{tag}" if tag else ""
        self.stdout_path = base / f"agent{suffix}.stdout"
        self.stderr_path = base / f"agent{suffix}.stderr"
        self.proc: subprocess.Popen | None = None
        self.stop_info: dict[str, Any] = {}

    def env(self) -> dict[str, str]:
        """The benchmark's environment, the rule cache in its folder, no GUARD_CONFIG."""
        env = dict(os.environ, XDG_CACHE_HOME=str(self.base / "cache"))
        env.pop("GUARD_CONFIG", None)
        return env

    def start(self, timeout: float = STARTUP_S) -> float:
        """Start the agent; seconds until it was ready. AgentFailed when it is not."""
        self.status_path.unlink(missing_ok=True)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "guard", "run", "--config", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=self.env(),
                start_new_session=True)
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise AgentFailed(f"agent exited with status {self.proc.returncode} at "
                                  f"start: {self.stderr_tail()}")
            st = self.status()
            if st and st.get("state") == "running" and st["counters"]["sweeps"] >= 1:
                return time.monotonic() - started
            time.sleep(0.05)
        raise AgentFailed(f"agent not ready within {timeout:.0f} s: {self.stderr_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            code = self.proc.returncode if self.proc else None
            raise AgentFailed(f"agent died (status {code}): {self.stderr_tail()}")

    def status(self) -> dict | None:
        try:
            return json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return None

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "guard", *args, "--config",
                               str(self.config)], capture_output=True, text=True, timeout=60,
                              env=self.env())

    def stderr_tail(self, n: int = 2000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-n:].strip() or "(no stderr)"
        except OSError:
            return "(no stderr)"

    def cpu_s(self) -> float:
        try:
            import psutil
            t = psutil.Process(self.proc.pid).cpu_times()
            return t.user + t.system
        except Exception:  # noqa: BLE001 - gone, or no psutil: unknown
            return math.nan

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_GRACE_S; never raises."""
        if self.proc is None:
            return
        if self.proc.poll() is not None:
            self.stop_info = {"already_exited": self.proc.returncode}
            return
        t0 = time.monotonic()
        killed = False
        try:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                killed = True
                self.proc.kill()
                self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.stop_info = {"error": str(exc)}
            return
        self.stop_info = {"exit_s": round(time.monotonic() - t0, 3), "sigkill": killed,
                          "returncode": self.proc.returncode}


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def quantile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)
