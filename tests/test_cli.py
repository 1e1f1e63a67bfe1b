"""`guard scan` as a user runs it: a real child process, real files, real exit codes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

import builders as b

SUMMARY = re.compile(r"^scanned (\d+) files: (\d+) malicious, (\d+) suspicious, (\d+) errors "
                     r"in \d+\.\d+ s")


def run(cmd, *args, **kw):
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True,
                          timeout=120, **kw)


def test_benign_folder_exits_0_with_summary(guard_cmd):
    r = run(guard_cmd, "scan", b.BENIGN)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1
    m = SUMMARY.match(lines[0])
    assert m and int(m[1]) == sum(1 for p in b.BENIGN.rglob("*") if p.is_file())
    assert m.groups()[1:] == ("0", "0", "0")


def test_flagged_file_exits_1_with_plain_reason(guard_cmd, tmp_path):
    (tmp_path / "Contract.pdf").write_bytes(b.pe32())
    (tmp_path / "notes.txt").write_text("hello")
    r = run(guard_cmd, "scan", tmp_path)
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"{tmp_path}/Contract.pdf: MALICIOUS: 'Contract.pdf' is a "
                               "Windows program, not a PDF. [type-mismatch")
    assert SUMMARY.match(lines[1]).groups()[:4] == ("2", "1", "0", "0")


def test_missing_path_exits_2(guard_cmd, tmp_path):
    (tmp_path / "ok.txt").write_text("hello")
    r = run(guard_cmd, "scan", tmp_path / "ok.txt", tmp_path / "missing.pdf")
    assert r.returncode == 2
    assert f"{tmp_path}/missing.pdf: ERROR: no such file or directory" in r.stdout
    assert SUMMARY.match(r.stdout.splitlines()[-1]).group(4) == "1"


def test_json_lines_have_the_documented_fields(guard_cmd, tmp_path):
    (tmp_path / "Contract.pdf.exe").write_bytes(b.pe32())
    (tmp_path / "a.txt").write_text("hello")
    r = run(guard_cmd, "scan", "--json", tmp_path)
    assert r.returncode == 1
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(records) == 2 and SUMMARY.match(r.stderr.splitlines()[-1])
    for rec in records:
        assert set(rec) >= {"path", "sha256", "size", "verdict", "type", "claimed_family",
                            "reasons", "rules", "error"}
        assert rec["verdict"] in ("clean", "suspicious", "malicious")
        assert set(rec["type"]) >= {"mime", "description", "family"}
        assert rec["type"]["family"] in ("document", "image", "audio", "video", "archive",
                                         "disk-image", "executable", "script", "shortcut",
                                         "other")
        assert isinstance(rec["rules"], list) and rec["error"] is None
        for reason in rec["reasons"]:
            assert set(reason) >= {"code", "severity", "message"}
    bad = next(r for r in records if r["path"].endswith(".exe"))
    assert bad["verdict"] == "malicious" and bad["claimed_family"] == "executable"
    assert bad["type"]["family"] == "executable" and len(bad["sha256"]) == 64
    assert bad["details"]["pe"]["kind"] == "exe"
    assert "double-extension" in [x["code"] for x in bad["reasons"]]


def test_broken_rule_file_is_reported_and_the_rest_still_load(guard_cmd, tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "good.yar").write_text(
        'rule test_marker { strings: $a = "GUARD-TEST-MARKER" condition: $a }\n')
    (rules / "bad.yar").write_text("rule broken {\n  condition:\n    true and\n}\n")
    (rules / "loki.yar").write_text(
        'rule loki_externals { condition: filename == "sample.txt" and extension == ".txt"'
        ' and filetype == "TEXT" and owner == "root" and filepath endswith "sample.txt" }\n')
    sample = tmp_path / "data" / "sample.txt"
    sample.parent.mkdir()
    sample.write_text("here is GUARD-TEST-MARKER inside\n")
    r = run(guard_cmd, "scan", "--json", "--rules", rules, sample.parent)
    assert r.returncode == 2, r.stderr
    assert re.search(rf"{re.escape(str(rules / 'bad.yar'))}:4: syntax error", r.stderr)
    rec = json.loads(r.stdout.splitlines()[0])
    assert set(rec["rules"]) >= {"test_marker", "loki_externals"}
    check = run(guard_cmd, "rules", "check", rules)
    assert check.returncode == 2 and "broken" in check.stdout and "bad.yar:4:" in check.stdout


def test_bundled_rules_compile_clean(guard_cmd):
    r = run(guard_cmd, "rules", "check")
    assert r.returncode == 0, r.stdout
    assert " 0 broken" in r.stdout


def test_hostile_name_prints_on_one_line(guard_cmd, tmp_path):
    raw = os.fsencode(str(tmp_path)) + b"/evil\nname\x1b[31m\xff.pdf"
    with open(raw, "wb") as fh:
        fh.write(b.pe32())
    r = subprocess.run([*guard_cmd, "scan", tmp_path], capture_output=True, timeout=60)
    out = r.stdout.decode()
    assert r.returncode == 1
    assert len(out.splitlines()) == 2 and "\x1b" not in out and "\\xff" in out
    rj = subprocess.run([*guard_cmd, "scan", "--json", tmp_path], capture_output=True,
                        timeout=60)
    rec = json.loads(rj.stdout)
    import base64
    assert base64.b64decode(rec["path_b64"]) == raw


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv to drop the read-override capability")
def test_unreadable_file_is_an_error(guard_cmd, tmp_path):
    secret = tmp_path / "secret.pdf"
    secret.write_bytes(b"%PDF-1.4\n")
    os.chown(secret, 65534, 65534)
    secret.chmod(0o600)
    # root without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH cannot read another user's 0600
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    r = run([*drop, *guard_cmd], "scan", "--no-bundled-rules", secret)
    assert r.returncode == 2, r.stderr
    assert f"{secret}: ERROR: permission denied" in r.stdout


def test_many_files_use_worker_processes_and_keep_order(guard_cmd, tmp_path):
    names = []
    for i in range(60):
        name = f"f{i:03d}.pdf" if i % 7 else f"f{i:03d}.pdf.exe"
        (tmp_path / name).write_bytes(b.pe32() if i % 7 == 0 else b"%PDF-1.4\n%%EOF\n")
        names.append(name)
    r = run(guard_cmd, "scan", "--json", "--jobs", "2", tmp_path)
    got = [os.path.basename(json.loads(line)["path"]) for line in r.stdout.splitlines()]
    assert got == sorted(names)
    assert r.returncode == 1


def test_bad_arguments_exit_2(guard_cmd):
    assert run(guard_cmd, "scan").returncode == 2
    assert run(guard_cmd, "scan", "--max-size", "-3", "x").returncode == 2
    assert run(guard_cmd).returncode == 2


def test_version(guard_cmd):
    r = run(guard_cmd, "--version")
    assert r.returncode == 0 and r.stdout.startswith("guard ")


def test_library_entry_point(tmp_path):
    import guard

    path = tmp_path / "Invoice.pdf"
    path.write_bytes(b.pe32())
    v = guard.scan_path(path)
    assert isinstance(v, guard.Verdict) and v.level is guard.Level.MALICIOUS
    assert sys.modules["guard"].__version__
