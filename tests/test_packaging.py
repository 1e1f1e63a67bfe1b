"""Packaging: the service units verify, the launchd plists parse, the wheel and sdist
carry the rules, and the Debian package installs, runs and removes cleanly.

The .deb test installs into the real system (dpkg -i): it runs only as root where dpkg
exists and no guard package, /opt/guard, /etc/guard, /var/lib/guard or /var/log/guard
is there already, so it never touches an installation it did not make (CI's fresh
machine qualifies). The Windows service cannot run here: only its refusal is tested.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import builders as b

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "packaging"
GUARD_BIN = Path(sys.executable).with_name("guard")


def _run(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, **kw)


needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze not installed")


@needs_analyze
@pytest.mark.parametrize("unit,user", [("guard.service", False), ("guard-user.service", True)])
def test_systemd_units_verify_cleanly(tmp_path, unit, user):
    """`systemd-analyze verify` with the ExecStart pointed at this environment's guard
    (the packaged path exists only once the .deb is installed: verified there too)."""
    text = (PKG / "systemd" / unit).read_text()
    assert "/opt/guard/venv/bin/guard" in text
    copy = tmp_path / ("guard.service")
    copy.write_text(text.replace("/opt/guard/venv/bin/guard", str(GUARD_BIN)))
    env = dict(os.environ)
    argv = ["systemd-analyze"]
    if user:
        runtime = tmp_path / "xdg-runtime"
        runtime.mkdir(mode=0o700)
        env["XDG_RUNTIME_DIR"] = str(runtime)
        argv.append("--user")
    r = _run([*argv, "verify", str(copy)], env=env)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr   # no warnings either
    # what the system unit promises
    if not user:
        for line in ("Type=notify", "WatchdogSec=", "NoNewPrivileges=yes", "ProtectSystem=strict",
                     "PrivateTmp=yes", "CAP_SYS_ADMIN", "ExecReload=/bin/kill -HUP $MAINPID"):
            assert line in text


@needs_analyze
def test_a_misspelled_unit_key_is_caught(tmp_path):
    """The check above can fail: systemd-analyze reports unknown keys."""
    copy = tmp_path / "guard.service"
    copy.write_text((PKG / "systemd" / "guard.service").read_text()
                    .replace("/opt/guard/venv/bin/guard", str(GUARD_BIN))
                    .replace("WatchdogSec=", "WatchdogSecs="))
    r = _run(["systemd-analyze", "verify", str(copy)])
    assert "Unknown key" in r.stderr


@pytest.mark.parametrize("name,label,system", [
    ("com.guard-project.guard.plist", "com.guard-project.guard", True),
    ("com.guard-project.guard.user.plist", "com.guard-project.guard.user", False)])
def test_launchd_plists_parse_and_run_the_agent(name, label, system):
    """Parsed with plistlib (launchd itself exists only on macOS: not run here)."""
    with open(PKG / "macos" / name, "rb") as f:
        plist = plistlib.load(f)
    assert plist["Label"] == label
    assert plist["ProgramArguments"][:2] == ["/opt/guard/venv/bin/guard", "run"]
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] == {"SuccessfulExit": False}
    assert ("--config" in plist["ProgramArguments"]) is system


def test_windows_service_command_refuses_clearly_elsewhere():
    r = _run([sys.executable, "-m", "guard", "service", "install"])
    assert r.returncode == 2
    assert "Windows service" in r.stderr and "systemd" in r.stderr and "\n" == r.stderr[-1]
    assert r.stderr.count("\n") == 1


def test_wheel_and_sdist_build_and_carry_the_rules(tmp_path):
    r = _run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(tmp_path),
              str(REPO)])
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("guard-*.whl")
    (sdist,) = tmp_path.glob("guard-*.tar.gz")
    rules = sorted(p.name for p in (REPO / "guard" / "rules").glob("*.yar"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert sorted(n.rsplit("/", 1)[1] for n in names
                      if n.startswith("guard/rules/") and n.endswith(".yar")) == rules
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        assert "guard = guard.cli:main" in z.read(entry).decode()
    with tarfile.open(sdist) as t:
        members = t.getnames()
        assert all(any(m.endswith(f"guard/rules/{r}") for m in members) for r in rules)


def _deb_prerequisites() -> str:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("dpkg", "dpkg-deb"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if not Path("/usr/bin/python3").exists():
        return "no system python3"
    if _run(["dpkg", "-s", "guard"]).returncode == 0:
        return "a guard package is installed already: not touching it"
    for p in ("/opt/guard", "/etc/guard", "/var/lib/guard", "/var/log/guard", "/usr/bin/guard"):
        if os.path.lexists(p):
            return f"{p} exists already: not touching it"
    return ""


def test_debian_package_installs_runs_and_removes_cleanly(tmp_path):
    why_not = _deb_prerequisites()
    if why_not:
        if os.environ.get("CI"):
            pytest.fail(f"CI must build and install the .deb, but: {why_not}")
        pytest.skip(why_not)
    r = _run([str(PKG / "build-deb.sh"), str(tmp_path)])
    assert r.returncode == 0, r.stderr[-2000:]
    deb = Path(r.stdout.strip().splitlines()[-1])
    assert deb.is_file() and deb.suffix == ".deb"
    try:
        r = _run(["dpkg", "-i", str(deb)])
        assert r.returncode == 0, r.stdout + r.stderr
        r = _run(["guard", "--version"])
        assert r.returncode == 0 and r.stdout.startswith("guard ")
        bad = tmp_path / "Contract.pdf"
        bad.write_bytes(b.pe32())
        good = tmp_path / "notes.txt"
        good.write_text("minutes of the meeting\n")
        assert _run(["/usr/bin/guard", "scan", str(good)]).returncode == 0
        r = _run(["/usr/bin/guard", "scan", "--json", str(bad)])
        assert r.returncode == 1 and '"malicious"' in r.stdout     # bundled rules and parsers
        # The agent's parsers run in a worker that drops root: the packaged install is
        # readable by other users, so lazily imported parser modules still load as nobody.
        code = ("from guard.sandbox import IsolatedScanner\n"
                "from guard.scanner import load_rules\n"
                "s = IsolatedScanner(load_rules())\n"
                f"levels = [s.scan_file(p).level.value for p in ({str(bad)!r}, {str(good)!r})]\n"
                "print(s.worker_user or '-', *levels, s.failures)\n"
                "s.close()\n")
        r = _run(["/opt/guard/venv/bin/python", "-c", code])
        assert r.stdout.split() == ["nobody", "malicious", "clean", "0"], r.stdout + r.stderr
        r = _run(["guard", "config", "check", "--config", "/etc/guard/config.toml"])
        assert r.returncode == 0, r.stderr
        if shutil.which("systemd-analyze"):
            r = _run(["systemd-analyze", "verify", "/lib/systemd/system/guard.service"])
            assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
        assert oct(os.stat("/var/lib/guard").st_mode & 0o777) == "0o700"
        r = _run(["dpkg", "-r", "guard"])
        assert r.returncode == 0, r.stderr
        assert not os.path.lexists("/opt/guard") and not os.path.lexists("/usr/bin/guard")
        assert Path("/etc/guard/config.toml").exists()            # a conffile stays until purge
        r = _run(["dpkg", "--purge", "guard"])
        assert r.returncode == 0, r.stderr
        for p in ("/etc/guard", "/var/lib/guard", "/var/log/guard", "/opt/guard"):
            assert not os.path.lexists(p), p
        assert _run(["dpkg", "-s", "guard"]).returncode != 0
    finally:
        if _run(["dpkg", "-s", "guard"]).returncode == 0:
            _run(["dpkg", "--purge", "guard"])
