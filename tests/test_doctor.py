"""`guard doctor` on real installations in temporary folders: 0 healthy, 1 degraded."""

from __future__ import annotations

import json
import os
import socket

from daemon_support import wait_until, write_config


def _doctor(agent_or_cfg, *extra: str):
    import subprocess
    import sys
    cfg = getattr(agent_or_cfg, "config", agent_or_cfg)
    r = subprocess.run([sys.executable, "-m", "guard", "doctor", "--config", str(cfg), *extra],
                       capture_output=True, text=True, timeout=60)
    return r


def _checks(r) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(r.stdout)["checks"]}


def test_a_running_agent_with_a_sound_setup_is_healthy(agent, tmp_path):
    a = agent()
    a.cli("allow", "add", "--sha256", "a" * 64, "--reason", "test")   # makes the allowlist
    assert wait_until(lambda: a.status()["allowlist"]["entries"] == 1, 5)
    r = _doctor(a)
    assert r.returncode == 0, r.stdout
    assert r.stdout.strip().endswith("healthy")
    r = _doctor(a, "--json")
    checks = _checks(r)
    assert json.loads(r.stdout)["healthy"] is True
    assert {"config", "allowlist", "quarantine vault", "audit log", "launch control", "rules",
            "watched folders", "audit log chain", "agent", "syslog collector"} <= set(checks)
    assert all(c["status"] == "ok" for c in checks.values())


def test_each_problem_degrades_and_is_explained(agent, tmp_path):
    a = agent()
    a.stop()
    allowlist = tmp_path / "allowlist.toml"
    allowlist.write_text("")
    os.chmod(allowlist, 0o666)                                 # anyone could allow anything
    log = tmp_path / "log" / "audit.jsonl"
    lines = log.read_text().splitlines()
    lines[0] = lines[0].replace('"guard-started"', '"guard-Started"')
    log.write_text("\n".join(lines) + "\n")                    # tampered record
    with socket.socket() as s:                                  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = write_config(tmp_path, extra=f'syslog_target = "tcp://127.0.0.1:{port}"')
    r = _doctor(cfg, "--json")
    assert r.returncode == 1
    checks = _checks(r)
    assert checks["allowlist"]["status"] == "fail" and "writable by everyone" in \
        checks["allowlist"]["detail"] and "chmod" in checks["allowlist"]["hint"]
    assert checks["audit log chain"]["status"] == "fail" and "TAMPERED" in \
        checks["audit log chain"]["detail"]
    assert checks["agent"]["status"] == "warn"
    assert checks["syslog collector"]["status"] == "warn"
    text = _doctor(cfg)
    assert text.returncode == 1 and "degraded" in text.stdout.splitlines()[-1]
    assert "-> " in text.stdout                                 # hints for people


def test_a_broken_config_is_one_failed_check_with_its_line(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text('mode = "enforce"\nworkers = "two"\n')
    r = _doctor(cfg, "--json")
    assert r.returncode == 1
    (check,) = json.loads(r.stdout)["checks"]
    assert check["name"] == "config" and f"{cfg}:2:" in check["detail"]


def test_missing_watched_folder_fails(tmp_path):
    cfg = write_config(tmp_path, watch=tmp_path / "Downloads")
    (tmp_path / "Downloads").rmdir()
    checks = _checks(_doctor(cfg, "--json"))
    assert checks["watched folders"]["status"] == "fail"
