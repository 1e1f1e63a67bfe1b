"""The agent as employees run it: a real process watching real folders.

Every test starts `python -m guard run` on temporary folders and stops it afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import builders as b
from daemon_support import Agent, wait_until, write_config
from test_disguises import CASES

QUARANTINE_WITHIN_S = 2.0


def _drop(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def test_each_disguise_is_quarantined_within_2s_and_benign_files_stay(agent, tmp_path):
    a = agent()
    downloads = tmp_path / "Downloads"
    benign = []
    for src in sorted(b.BENIGN.rglob("*")):
        if src.is_file():
            dst = downloads / "benign" / src.relative_to(b.BENIGN)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            benign.append(dst)
    slow = []
    for i, (name, data, _code, _words) in enumerate(CASES):
        folder = downloads / f"case{i:02d}"
        folder.mkdir()
        dropped = time.monotonic()
        path = _drop(folder, name, data)
        gone = wait_until(lambda: not path.exists(), QUARANTINE_WITHIN_S + 3)
        took = time.monotonic() - dropped
        assert gone, f"{name!r} not quarantined"
        if took > QUARANTINE_WITHIN_S:
            slow.append((name, round(took, 2)))
    assert not slow, f"quarantined later than {QUARANTINE_WITHIN_S} s: {slow}"
    items = a.vault_items()
    assert len(items) == len(CASES)
    assert all(item["verdict"] == "malicious" for item in items)
    wait_until(lambda: a.status()["counters"]["scanned"] >= len(benign) + len(CASES), 10)
    for p in benign:
        assert p.exists(), p
    assert all(hashlib.sha256(p.read_bytes()).hexdigest() ==
               hashlib.sha256((b.BENIGN / p.relative_to(downloads / "benign")).read_bytes()
                              ).hexdigest() for p in benign)
    notes = [json.loads(line) for line in (tmp_path / "notifications.jsonl").read_text(
    ).splitlines()]
    assert len(notes) == len(CASES)
    assert any("is a Windows program, not a PDF" in n["body"] for n in notes)
    recs = [r for r in a.records() if r["event"]["action"] == "quarantine"]
    assert len(recs) == len(CASES)
    for r in recs:
        assert r["event"]["outcome"] == "success"
        assert r["guard"]["source"] == "browser" and r["file"]["hash"]["sha256"]
        assert {"@timestamp", "host"} <= set(r)


def test_partial_download_is_ignored_until_renamed(agent, tmp_path):
    a = agent()
    part = _drop(tmp_path / "Downloads", "Contract.pdf.crdownload", b.pe32())
    time.sleep(1.0)
    assert part.exists(), "a partial download must not be touched"
    final = part.with_name("Contract.pdf")
    part.rename(final)
    assert wait_until(lambda: not final.exists(), 5)
    (item,) = a.vault_items()
    assert item["original_path"] == str(final)


def test_file_moved_in_from_elsewhere_counts(agent, tmp_path):
    agent()
    outside = _drop(tmp_path, "Invoice.docx", b.pe32())
    target = tmp_path / "Downloads" / "Invoice.docx"
    os.rename(outside, target)
    assert wait_until(lambda: not target.exists(), 5)


def test_new_subfolder_files_are_seen(agent, tmp_path):
    agent()
    staging = tmp_path / "staging"
    (staging / "deep").mkdir(parents=True)
    (staging / "deep" / "Contract.pdf").write_bytes(b.pe32())
    os.rename(staging, tmp_path / "Downloads" / "unpacked")
    assert wait_until(lambda: not (tmp_path / "Downloads/unpacked/deep/Contract.pdf").exists(), 5)


def test_monitor_mode_changes_nothing_on_disk(agent, tmp_path):
    a = agent(mode="monitor")
    paths = [_drop(tmp_path / "Downloads", f"d{i}-{name}", data)
             for i, (name, data, _c, _w) in enumerate(CASES[:8])]
    before = {p: p.read_bytes() for p in paths}
    assert wait_until(lambda: len([r for r in a.records()
                                   if r["event"]["action"] == "would-quarantine"]) >= 8, 10)
    assert all(p.read_bytes() == before[p] for p in paths)
    assert a.vault_items() == []
    rec = next(r for r in a.records() if r["event"]["action"] == "would-quarantine")
    assert rec["guard"]["decision"] == {**rec["guard"]["decision"], "action": "allow",
                                        "intended": "quarantine", "mode": "monitor"}


@pytest.mark.parametrize("pad", [100, 3 * 1024 * 1024 + 7], ids=["small", "3MB"])
def test_restore_round_trip_gives_back_the_original_bytes(agent, tmp_path, pad):
    a = agent()
    data = b.pe32() + os.urandom(pad)       # 3 MB: hashed beside the scan, copied in chunks
    path = _drop(tmp_path / "Downloads", "Contract.pdf", data)
    os.chmod(path, 0o640)
    assert wait_until(lambda: not path.exists(), 5)
    (item,) = a.vault_items()
    stored = (tmp_path / "vault" / "items" / f"{item['id']}.bin").read_bytes()
    assert b.pe32()[:64] not in stored                     # neutralised in the vault
    assert item["sha256"] == hashlib.sha256(data).hexdigest() and item["size"] == len(data)
    q = next(rec for rec in a.records() if rec["event"]["action"] == "quarantine")
    timing = q["guard"]["timing"]
    assert timing["scan_ms"] > 0 and timing["quarantine_ms"] > 0
    assert q["event"]["duration"] == int((timing["scan_ms"] + timing["quarantine_ms"]) * 1e6)
    assert os.stat(tmp_path / "vault").st_mode & 0o777 == 0o700
    a.stop()
    r = a.cli("quarantine", "restore", item["id"])
    assert r.returncode == 0, r.stderr
    assert path.read_bytes() == data
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert a.vault_items() == []
    acts = [rec["event"]["action"] for rec in a.records()]
    assert "restore" in acts
    restore = next(rec for rec in a.records() if rec["event"]["action"] == "restore")
    assert restore["user"]["name"]


def test_restore_refuses_to_overwrite(agent, tmp_path):
    a = agent()
    path = _drop(tmp_path / "Downloads", "Contract.pdf", b.pe32())
    assert wait_until(lambda: not path.exists(), 5)
    (item,) = a.vault_items()
    a.stop()
    path.write_text("a new file took the name")
    r = a.cli("quarantine", "restore", item["id"])
    assert r.returncode == 2 and "refused" in r.stderr
    assert path.read_text() == "a new file took the name"
    other = tmp_path / "elsewhere"
    other.mkdir()
    r = a.cli("quarantine", "restore", item["id"], "--to", str(other))
    assert r.returncode == 0, r.stderr
    assert (other / "Contract.pdf").read_bytes() == b.pe32()


def test_purge(agent, tmp_path):
    a = agent()
    for i in range(2):
        p = _drop(tmp_path / "Downloads", f"c{i}.pdf", b.pe32() + bytes([i]))
        assert wait_until(lambda: not p.exists(), 5)
    items = a.vault_items()
    assert len(items) == 2
    assert a.cli("quarantine", "purge", items[0]["id"]).returncode == 0
    assert len(a.vault_items()) == 1
    assert a.cli("quarantine", "purge", "--older-than", "1").returncode == 0
    assert len(a.vault_items()) == 1                      # not older than a day
    # the CLI writes into the agent's chained log (the writer locks per record)
    assert wait_until(lambda: "purge" in [r["event"]["action"] for r in a.records()], 5)


def test_kill9_mid_burst_then_restart_loses_and_duplicates_nothing(agent, tmp_path):
    a = agent()
    downloads = tmp_path / "Downloads"
    bad, good = {}, []
    for i in range(120):
        if i % 2:
            data = b.pe32() + i.to_bytes(4, "little")          # unique content each
            bad[hashlib.sha256(data).hexdigest()] = downloads / f"Invoice-{i}.pdf"
            _drop(downloads, f"Invoice-{i}.pdf", data)
        else:
            good.append(_drop(downloads, f"notes-{i}.txt", f"hello {i}\n".encode()))
        if i == 60:
            a.kill9()
    a2 = Agent(tmp_path, a.config).start()
    try:
        assert wait_until(lambda: not any(p.exists() for p in bad.values()), 15)
        items = a2.vault_items()
        hashes = [it["sha256"] for it in items]
        assert sorted(hashes) == sorted(bad)                     # each once, none missing
        assert all(p.exists() for p in good)                      # nothing benign moved
        assert list((tmp_path / "vault" / "tmp").iterdir()) == []
        a2.stop()
        r = a2.cli("log", "verify")
        assert r.returncode == 0, r.stdout
    finally:
        if a2.proc.poll() is None:
            a2.stop()


def test_log_tampering_is_detected(agent, tmp_path):
    a = agent()
    for i in range(3):
        p = _drop(tmp_path / "Downloads", f"c{i}.pdf", b.pe32() + bytes([i]))
        assert wait_until(lambda: not p.exists(), 5)
    a.stop()
    log = tmp_path / "log" / "audit.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    assert a.cli("log", "verify").returncode == 0
    q = next(i for i, line in enumerate(lines) if '"action":"quarantine"' in line)
    edited = lines[q].replace('"action":"quarantine"', '"action":"file-scanned"')
    variants = {
        "edited": lines[:q] + [edited] + lines[q + 1:],
        "deleted": lines[:2] + lines[3:],
        "reordered": lines[:2] + [lines[3], lines[2]] + lines[4:],
    }
    for what, content in variants.items():
        bad = tmp_path / f"{what}.jsonl"
        bad.write_text("".join(content))
        r = a.cli("log", "verify", "--file", str(bad))
        assert r.returncode == 1, (what, r.stdout)
        assert "TAMPERED" in r.stdout


def test_second_instance_refuses_to_start(agent, tmp_path):
    a = agent()
    r = subprocess.run([sys.executable, "-m", "guard", "run", "--config", str(a.config)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 12 and "already running" in r.stderr


def test_sigterm_exits_quickly_and_status_reports(agent, tmp_path):
    a = agent()
    r = a.cli("status")
    assert r.returncode == 0 and "enforce mode" in r.stdout and str(tmp_path) in r.stdout
    assert a.stop() < 5.0
    assert a.cli("status").returncode == 3


def test_sighup_keeps_last_good_config_and_applies_a_good_one(agent, tmp_path):
    a = agent()
    good = a.config.read_text()
    a.config.write_text(good + "\nmode = 42\n")
    a.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: any(r["event"]["action"] == "config-reload" and
                                  r["event"]["outcome"] == "failure" for r in a.records()), 10)
    p = _drop(tmp_path / "Downloads", "still.pdf", b.pe32())
    assert wait_until(lambda: not p.exists(), 5)               # still enforcing
    a.config.write_text(good.replace('mode = "enforce"', 'mode = "monitor"'))
    a.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: a.status()["mode"] == "monitor", 10)
    p2 = _drop(tmp_path / "Downloads", "now.pdf", b.pe32() + b"x")
    assert wait_until(lambda: any(r["event"]["action"] == "would-quarantine"
                                  for r in a.records()), 10)
    assert p2.exists()


def test_meeting_app_switches_strict_policy_on_and_off(agent, tmp_path):
    a = agent(extra='meeting_apps = ["zoom"]\nmeeting_linger_s = 1\nmeeting_poll_s = 0.2')
    honest = _drop(tmp_path / "Downloads", "setup-before.exe", b.pe32())
    assert wait_until(lambda: a.status()["counters"]["scanned"] >= 1, 5)
    time.sleep(0.3)
    assert honest.exists()                                     # suspicious only: stays
    fake_zoom = tmp_path / "bin" / "zoom"
    fake_zoom.parent.mkdir()
    shutil.copy2("/bin/sleep", fake_zoom)
    call = subprocess.Popen([str(fake_zoom), "60"])
    try:
        assert wait_until(lambda: a.status()["meeting"], 10)
        during = _drop(tmp_path / "Downloads", "setup-during.exe", b.pe32() + b"1")
        assert wait_until(lambda: not during.exists(), 5)
    finally:
        call.kill()
        call.wait(5)
    assert wait_until(lambda: not a.status()["meeting"], 10)
    after = _drop(tmp_path / "Downloads", "setup-after.exe", b.pe32() + b"2")
    assert wait_until(lambda: a.status()["counters"]["scanned"] >= 3, 5)
    time.sleep(0.3)
    assert after.exists()
    rec = next(r for r in a.records() if r["event"]["action"] == "quarantine")
    assert rec["guard"]["meeting"] is True
    note = json.loads((tmp_path / "notifications.jsonl").read_text().splitlines()[0])
    assert "separate channel" in note["body"]
    acts = [r["event"]["action"] for r in a.records()]
    assert "meeting-started" in acts and "meeting-ended" in acts


def test_unchanged_file_is_not_scanned_twice(agent, tmp_path):
    a = agent()
    _drop(tmp_path / "Downloads", "notes.txt", b"hello")
    assert wait_until(lambda: a.status()["counters"]["scanned"] == 1, 5)
    sweeps = a.status()["counters"]["sweeps"]
    a.proc.send_signal(signal.SIGUSR1)                 # reconciliation sweep now
    assert wait_until(lambda: a.status()["counters"]["sweeps"] > sweeps, 5)
    assert wait_until(lambda: a.status()["counters"]["skipped_unchanged"] >= 1, 5)
    assert a.status()["counters"]["scanned"] == 1
    (tmp_path / "Downloads" / "notes.txt").write_bytes(b"hello, changed")
    assert wait_until(lambda: a.status()["counters"]["scanned"] == 2, 5)


def test_excluded_paths_cost_nothing(tmp_path):
    cfg = write_config(tmp_path, extra='exclude = ["*/build/*"]')
    a = Agent(tmp_path, cfg).start()
    try:
        (tmp_path / "Downloads" / "build").mkdir()
        ignored = _drop(tmp_path / "Downloads" / "build", "Contract.pdf", b.pe32())
        seen = _drop(tmp_path / "Downloads", "Contract.pdf", b.pe32())
        assert wait_until(lambda: not seen.exists(), 5)
        assert wait_until(lambda: a.status()["counters"]["scanned"] == 1, 5)
        time.sleep(0.5)
        assert ignored.exists() and a.status()["counters"]["scanned"] == 1
    finally:
        a.stop()


def test_idle_agent_applies_break_glass_and_allowlist_edits_at_once(agent, tmp_path):
    """An idle agent sleeps up to 10 s between rounds; a change to the break-glass file or
    the allowlist wakes it (inotify on their folders), well before that."""
    a = agent()
    time.sleep(2.5)                                   # idle: the housekeeper sleeps long
    r = a.cli("break-glass", "on")
    assert r.returncode == 0, r.stderr
    assert wait_until(lambda: a.status()["effective_mode"] == "monitor", 3)
    assert a.status()["break_glass"] is True
    p = _drop(tmp_path / "Downloads", "Contract.pdf", b.pe32())
    assert wait_until(lambda: any(r["event"]["action"] == "would-quarantine"
                                  for r in a.records()), 5)
    assert p.exists()                                 # monitor mode: nothing moved
    time.sleep(2.5)
    assert a.cli("break-glass", "off").returncode == 0
    assert wait_until(lambda: a.status()["effective_mode"] == "enforce", 3)
    msgs = [r["message"] for r in a.records() if r["event"]["action"] == "break-glass"]
    assert any("monitor mode in force" in m for m in msgs)
    assert any("configured mode restored" in m for m in msgs)
    time.sleep(2.5)
    tool = tmp_path / "tool"
    tool.write_bytes(b"#!/bin/sh\n")
    assert a.cli("allow", "add", str(tool), "--reason", "test").returncode == 0
    assert wait_until(lambda: a.status()["allowlist"]["entries"] == 1, 3)


def test_a_break_glass_file_not_owned_by_the_agent_user_is_ignored(agent, tmp_path):
    a = agent()
    flag = tmp_path / "state" / "break-glass"          # the default: beside status.json
    flag.write_text("planted\n")
    os.chown(flag, 12345, 12345)
    time.sleep(1.5)
    assert a.status()["break_glass"] is False and a.status()["effective_mode"] == "enforce"
    flag.unlink()
    flag.symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_text("x")
    time.sleep(1.5)
    assert a.status()["break_glass"] is False


def test_systemd_notify_ready_watchdog_and_stopping(agent, tmp_path):
    """The sd_notify protocol on a real datagram socket, as systemd's Type=notify with
    WatchdogSec=2 would set it up (systemd itself does not run on the test machine)."""
    import socket
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(10)
    try:
        a = agent(env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "2000000"})
        got: list[str] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and got.count("WATCHDOG=1") < 2:
            got.extend(sock.recv(4096).decode().splitlines())
        assert "READY=1" in got and got.count("WATCHDOG=1") >= 2
        assert any(line.startswith("STATUS=watching 1 folders") for line in got)
        a.proc.send_signal(signal.SIGHUP)
        seen = []
        while "READY=1" not in seen:
            seen.extend(sock.recv(4096).decode().splitlines())
        assert "RELOADING=1" in seen
        a.proc.send_signal(signal.SIGTERM)
        tail = []
        while "STOPPING=1" not in tail:
            tail.extend(sock.recv(4096).decode().splitlines())
        assert a.proc.wait(10) == 0
    finally:
        sock.close()
