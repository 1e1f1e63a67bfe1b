from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from builders import CORPUS  # noqa: E402


def pytest_configure(config):
    if not CORPUS.is_dir():
        raise pytest.UsageError(f"test corpus not found at {CORPUS}")
    # Compiled-rule caches go to a throwaway folder, never to the user's ~/.cache.
    config._guard_cache = tempfile.mkdtemp(prefix="guard-test-cache-")
    os.environ["XDG_CACHE_HOME"] = config._guard_cache


def pytest_unconfigure(config):
    cache = getattr(config, "_guard_cache", None)
    if cache:
        shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(scope="session")
def scanner():
    """A scanner with the bundled rules, compiled once for the session."""
    from guard.scanner import Scanner, load_rules

    return Scanner(load_rules())


@pytest.fixture
def guard_cmd():
    """argv prefix that runs this checkout's guard CLI in a child process."""
    return [sys.executable, "-m", "guard"]


@pytest.fixture(autouse=True)
def no_thread_leaks():
    """Every test leaves the thread count as it found it."""
    before = {t.ident for t in threading.enumerate()}
    yield
    leaked = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()
              and not t.daemon]
    assert not leaked, f"threads leaked: {leaked}"




@pytest.fixture
def agent(tmp_path):
    """start(mode, extra config lines, env) -> a running agent on tmp_path's folders;
    every agent started is stopped afterwards."""
    from daemon_support import Agent, write_config

    running = []

    def start(mode: str = "enforce", extra: str = "", env: dict | None = None):
        a = Agent(tmp_path, write_config(tmp_path, mode, extra)).start(env)
        running.append(a)
        return a

    yield start
    for a in running:
        if a.proc is not None and a.proc.poll() is None:
            a.stop()
