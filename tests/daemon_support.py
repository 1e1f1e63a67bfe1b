"""Run the real agent (`python -m guard run`) in a child process against temporary folders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STARTUP_S = 30.0


def write_config(base: Path, mode: str = "enforce", extra: str = "", watch: Path | None = None,
                 source: str = "browser") -> Path:
    watch = watch or base / "Downloads"
    watch.mkdir(parents=True, exist_ok=True)
    cfg = base / "config.toml"
    cfg.write_text(f'''
mode = "{mode}"
quarantine_dir = "{base / 'vault'}"
log_file = "{base / 'log' / 'audit.jsonl'}"
allowlist = "{base / 'allowlist.toml'}"
state_dir = "{base / 'state'}"
notify = "file:{base / 'notifications.jsonl'}"
settle_s = 0.3
sweep_interval_s = 600
{extra}

[[watch]]
path = "{watch}"
source = "{source}"
''')
    return cfg


class Agent:
    def __init__(self, base: Path, config: Path):
        self.base = base
        self.config = config
        self.proc: subprocess.Popen | None = None

    @property
    def status_path(self) -> Path:
        return self.base / "state" / "status.json"

    def start(self, env: dict[str, str] | None = None) -> "Agent":
        """Start the agent (extra environment variables in *env*) and wait until ready."""
        self.status_path.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "guard", "run", "--config", str(self.config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})})
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited {self.proc.returncode}: "
                                   f"{self.proc.stderr.read()}")
            st = self.status()
            if st and st.get("state") == "running" and st["counters"]["sweeps"] >= 1:
                return self
            time.sleep(0.05)
        raise RuntimeError("agent did not become ready")

    def status(self) -> dict | None:
        try:
            return json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return None

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "guard", *args, "--config", str(self.config)],
                           capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(r.stdout + r.stderr)
        return r

    def records(self) -> list[dict]:
        """The audit records written so far, oldest first: complete lines only (the agent
        may be mid-write)."""
        out = []
        for p in sorted((self.base / "log").glob("audit.jsonl*"), reverse=True):
            if p.name.endswith(".lock"):
                continue
            text = p.read_text()
            complete = text[: text.rfind("\n") + 1]      # not a line still being written
            out += [json.loads(line) for line in complete.splitlines() if line.strip()]
        return out

    def vault_items(self) -> list[dict]:
        r = self.cli("quarantine", "list", "--json", check=True)
        return [json.loads(line) for line in r.stdout.splitlines()]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> float:
        """Stop the agent; returns how long it took to exit."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise
        finally:
            for stream in (self.proc.stdout, self.proc.stderr):
                stream.close()
        return time.monotonic() - started

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


def wait_until(predicate, timeout: float, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()
