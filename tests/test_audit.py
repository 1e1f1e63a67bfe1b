"""The tamper-evident audit log: chain, rotation, crash repair, tamper detection, follow.

Real files in tmp_path, no mocks. Crashes are real: a child process dies (os._exit) at
a chosen file-system step, picked with an audit hook.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from guard.audit import (AuditError, AuditLog, format_record, iter_records, log_files,
                         verify_log)
from guard.audit.writer import canonical_json, chain_digest, line_digest
from guard.errors import GuardError
from guard.verdict import Code, Level

ROOT = Path(__file__).resolve().parents[1]
ZEROS = "0" * 64
KEY = b"soc-secret-key-0123456789"


# --- helpers -----------------------------------------------------------------------------

def sample_record(i: int) -> dict[str, Any]:
    """A record shaped like the daemon's (nested ECS objects)."""
    return {"event": {"action": "quarantine" if i % 3 == 0 else "file-scanned",
                      "outcome": "success", "kind": "alert" if i % 3 == 0 else "event"},
            "file": {"path": f"/home/a/Downloads/file-{i}.pdf", "size": 1000 + i},
            "guard": {"verdict": "malicious" if i % 3 == 0 else "clean"},
            "message": f"record number {i}"}


def write_records(log: AuditLog, n: int, start: int = 0) -> list[dict[str, Any]]:
    return [log.write(sample_record(start + i)) for i in range(n)]


def read_lines(path: Path) -> list[bytes]:
    """Lines with their newlines (a torn last line keeps none)."""
    return path.read_bytes().splitlines(keepends=True)


def all_seqs(path: Path) -> list[int]:
    return [r["guard"]["seq"] for r in iter_records(path)]


def make_log(tmp_path: Path, n: int = 50, key: bytes | None = None) -> tuple[Path, list[bytes]]:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, fsync=False, key=key) as log:
        write_records(log, n)
    return path, read_lines(path)


def first_bad(path: Path, lines: list[bytes], key: bytes | None = None) -> int | None:
    """Write ``lines`` as the log and verify it; returns first_bad_seq (asserting not ok)."""
    path.write_bytes(b"".join(lines))
    res = verify_log(path, key=key)
    assert not res.ok and res.problems, "tampering went undetected"
    return res.first_bad_seq


def reseal(lines: list[bytes], start: int, edit: Callable[[dict[str, Any]], None],
           key: bytes | None) -> list[bytes]:
    """What an attacker does: edit record ``start`` and recompute the chain from there on
    (with ``key`` standing for whatever key the attacker has, None for plain sha256)."""
    out = list(lines[:start])
    for i, raw in enumerate(lines[start:], start):
        rec = json.loads(raw)
        if i == start:
            edit(rec)
        chain = rec["guard"]
        chain.pop("hash")
        chain["prev"] = line_digest(out[-1].rstrip(b"\n")) if out else ZEROS
        chain["alg"] = "sha256" if key is None else "hmac-sha256"
        chain["hash"] = chain_digest(chain["prev"], canonical_json(rec), key)
        out.append(canonical_json(rec).encode() + b"\n")
    return out


class HasToDict:
    """Stands for Verdict and friends: objects that know their JSON form."""

    def to_dict(self) -> dict[str, Any]:
        return {"path": "/x.pdf", "verdict": "clean"}


def flip(data: bytes, byte: int, bit: int) -> bytes:
    b = bytearray(data)
    b[byte] ^= 1 << bit
    return bytes(b)


# --- the chain ---------------------------------------------------------------------------

def test_chain_continuity_over_1000_records(tmp_path):
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, fsync=False) as log:
        written = write_records(log, 1000)
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 1001
    prev = ZEROS
    for i, (raw, rec) in enumerate(zip(lines, written), 1):
        # Re-derive the format from its description, independently of the module.
        parsed = json.loads(raw)
        assert parsed == rec
        chain = parsed["guard"]
        assert (chain["seq"], chain["prev"], chain["alg"]) == (i, prev, "sha256")
        body = json.loads(raw)
        del body["guard"]["hash"]
        canon = json.dumps(body, ensure_ascii=True, separators=(",", ":"), sort_keys=True)
        assert chain["hash"] == hashlib.sha256((prev + canon).encode()).hexdigest()
        prev = hashlib.sha256(raw).hexdigest()
    res = verify_log(path)
    assert res.ok and res.records == 1000 and res.first_bad_seq is None


def test_record_format_defaults_and_modes(tmp_path):
    path = tmp_path / "var" / "log" / "guard" / "audit.jsonl"
    caller = {"event": {"action": "restore"}, "ecs": {}, "@timestamp": "2026-01-02T03:04:05.678Z"}
    with AuditLog(path) as log:
        rec = log.write(caller)
        rec2 = log.write({"event": {"action": "purge"}, "host": {"name": "pc-1"}})
    assert caller == {"event": {"action": "restore"}, "ecs": {},
                      "@timestamp": "2026-01-02T03:04:05.678Z"}, "caller's dict changed"
    assert rec["@timestamp"] == "2026-01-02T03:04:05.678Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rec2["@timestamp"])
    assert rec["ecs"] == {"version": "8.11.0"} and rec["schema_version"] == 1
    assert rec2["host"] == {"name": "pc-1", "hostname": socket.gethostname()}
    assert rec["guard"]["seq"] == 1 and rec["guard"]["prev"] == ZEROS
    first, second = path.read_bytes().splitlines()
    assert json.loads(first) == rec and json.loads(second) == rec2
    assert first == json.dumps(rec, ensure_ascii=True, separators=(",", ":"),
                               sort_keys=True).encode()
    for d in (path.parent, path.parent.parent, path.parent.parent.parent):
        assert d.stat().st_mode & 0o777 == 0o750, d
    assert path.stat().st_mode & 0o777 == 0o640


def test_hmac_key_changes_hash_and_verifies_only_with_key(tmp_path):
    path, lines = make_log(tmp_path, 20, key=KEY)
    assert all(json.loads(x)["guard"]["alg"] == "hmac-sha256" for x in lines)
    assert verify_log(path, key=KEY).ok
    without = verify_log(path)
    assert without.ok and without.hashes_unchecked == 20   # linkage only, and says so
    wrong = verify_log(path, key=b"another key")
    assert not wrong.ok and wrong.first_bad_seq == 1


# --- rotation, resume, repair ------------------------------------------------------------

def test_rotation_keeps_seq_contiguous_across_files(tmp_path):
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, max_bytes=2048, keep=100, fsync=False) as log:
        write_records(log, 200)
    files = log_files(path)
    assert len(files) > 10 and files[-1] == path and files[0].name.endswith(f".{len(files) - 1}")
    assert all(f.stat().st_size <= 2048 for f in files)
    assert all_seqs(path) == list(range(1, 201))
    res = verify_log(path)
    assert res.ok and res.records == 200 and res.files == [str(f) for f in files]


def test_rotation_deletes_oldest_and_verify_anchors_on_it(tmp_path):
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, max_bytes=2048, keep=3, fsync=False) as log:
        write_records(log, 200)
    assert [f.name for f in log_files(path)] == ["audit.jsonl.3", "audit.jsonl.2",
                                                 "audit.jsonl.1", "audit.jsonl"]
    seqs = all_seqs(path)
    assert seqs == list(range(seqs[0], 201)) and seqs[0] > 1
    assert verify_log(path).ok
    with AuditLog(path, max_bytes=2048, keep=1, fsync=False) as log:   # keep lowered
        write_records(log, 20)
    assert [f.name for f in log_files(path)] == ["audit.jsonl.1", "audit.jsonl"]
    assert verify_log(path).ok


def test_deleting_a_whole_middle_file_is_detected(tmp_path):
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, max_bytes=2048, keep=100, fsync=False) as log:
        write_records(log, 100)
    victim = log_files(path)[2]
    gone = [json.loads(x)["guard"]["seq"] for x in read_lines(victim)]
    victim.unlink()
    res = verify_log(path)
    assert not res.ok and res.first_bad_seq == gone[0]
    assert "missing" in str(res.problems[0]) and "(deleted)" in str(res.problems[0])
    assert all_seqs(path) == [s for s in range(1, 101) if s not in gone]  # reading goes on


def test_resume_after_reopen(tmp_path):
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, max_bytes=2048, keep=100, fsync=False) as log:
        write_records(log, 30)
        last = log.write({"message": "before restart"})
    with AuditLog(path, max_bytes=2048, keep=100, fsync=False) as log:
        assert log.seq == 31
        rec = log.write({"message": "after restart"})
    assert rec["guard"]["seq"] == 32
    assert rec["guard"]["prev"] == hashlib.sha256(canonical_json(last).encode()).hexdigest()
    assert all_seqs(path) == list(range(1, 33)) and verify_log(path).ok


@pytest.mark.parametrize("current", ["torn", "missing", "empty"])
def test_resume_from_newest_rotated_file(tmp_path, current):
    """Crash right after rotation: the current file is missing, empty or holds a torn line."""
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, fsync=False) as log:
        write_records(log, 10)
    path.rename(path.with_name("audit.jsonl.1"))
    if current == "torn":
        path.write_bytes(b'{"@timestamp":"2026-')
    elif current == "empty":
        path.write_bytes(b"")
    with AuditLog(path, fsync=False) as log:
        rec = log.write({"message": "next"})
    expected_seq = 12 if current == "torn" else 11   # the repair record comes first
    assert rec["guard"]["seq"] == expected_seq
    assert all_seqs(path) == list(range(1, expected_seq + 1)) and verify_log(path).ok


def test_torn_last_line_is_cut_and_the_cut_recorded(tmp_path):
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, fsync=False) as log:
        write_records(log, 5)
    torn = canonical_json(sample_record(99)).encode()[:57]
    with open(path, "ab") as fh:
        fh.write(torn)
    res = verify_log(path)
    assert not res.ok and res.first_bad_seq == 6 and "torn" in res.problems[0].message
    with AuditLog(path, fsync=False) as log:
        log.write({"message": "after repair"})
    recs = list(iter_records(path))
    repair = recs[5]
    assert repair["event"]["action"] == "log-repaired" and repair["guard"]["seq"] == 6
    info = repair["guard"]["repair"]
    assert info["truncated_bytes"] == len(torn)
    assert info["truncated_sha256"] == hashlib.sha256(torn).hexdigest()
    assert base64.b64decode(info["truncated_b64"]) == torn
    assert [r["guard"]["seq"] for r in recs] == list(range(1, 8))
    assert verify_log(path).ok


CRASH_CHILD = r"""
import os, sys
from pathlib import Path
from guard.audit import AuditLog
path, crash_at = Path(sys.argv[1]), int(sys.argv[2])
log = AuditLog(path, max_bytes=1500, keep=3, fsync=False)
for i in range(40):
    log.write({"message": f"before {i}", "file": {"path": f"/tmp/x{i}"}})
count = 0
def hook(event, args):
    global count
    if event == "open" or event.startswith("os."):
        count += 1
        if count == crash_at:
            os._exit(9)          # dies before this step runs, like kill -9
sys.addaudithook(hook)
for i in range(40):
    rec = log.write({"message": f"after {i}", "file": {"path": f"/tmp/y{i}"}})
    print(rec["guard"]["seq"], flush=True)
"""


def test_crash_at_every_step_of_rotation_keeps_the_chain(tmp_path):
    """Kill a writer before each file-system step of two rotations; nothing acknowledged
    is lost and, after a restart, the chain verifies with no gap."""
    steps_seen = 0
    for crash_at in range(1, 25):
        path = tmp_path / f"run{crash_at}" / "audit.jsonl"
        child = subprocess.run([sys.executable, "-c", CRASH_CHILD, str(path), str(crash_at)],
                               cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert child.returncode in (0, 9), child.stderr
        steps_seen += child.returncode == 9
        acked = [int(x) for x in child.stdout.split()]
        with AuditLog(path, max_bytes=1500, keep=3, fsync=False) as log:
            write_records(log, 3)
        res = verify_log(path)
        assert res.ok, [str(p) for p in res.problems]
        seqs = all_seqs(path)
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        assert seqs[-1] == (acked[-1] if acked else 40) + 3
    assert steps_seen == 24, "some crash points were never reached"


# --- tamper detection --------------------------------------------------------------------

CHOSEN = (1, 25, 50)


def test_every_bit_flip_in_chosen_records_is_detected(tmp_path):
    path, lines = make_log(tmp_path)
    for seq in CHOSEN:
        line = lines[seq - 1]
        for byte in range(len(line)):          # the newline too
            for bit in range(8):
                tampered = lines[:seq - 1] + [flip(line, byte, bit)] + lines[seq:]
                assert first_bad(path, tampered) == seq, (seq, byte, bit)


def test_random_bit_flips_anywhere_are_detected(tmp_path):
    path, lines = make_log(tmp_path)
    data = b"".join(lines)
    starts = [sum(map(len, lines[:i])) for i in range(len(lines))]
    rng = random.Random(20261125)
    for _ in range(600):
        byte = rng.randrange(len(data))
        seq = max(i for i, s in enumerate(starts) if s <= byte) + 1
        path.write_bytes(flip(data, byte, rng.randrange(8)))
        res = verify_log(path)
        assert not res.ok and res.first_bad_seq == seq, (byte, [str(p) for p in res.problems])


def test_deleted_line_is_detected(tmp_path):
    path, lines = make_log(tmp_path)
    assert first_bad(path, lines[:19] + lines[20:]) == 20


def test_deleted_first_lines_are_detected_while_the_log_never_rotated(tmp_path):
    path, lines = make_log(tmp_path)
    assert first_bad(path, lines[3:]) == 1


def test_inserted_copy_of_a_line_is_detected(tmp_path):
    path, lines = make_log(tmp_path)
    assert first_bad(path, lines[:30] + [lines[4]] + lines[30:]) == 31


def test_inserted_garbage_line_is_detected(tmp_path):
    path, lines = make_log(tmp_path)
    assert first_bad(path, lines[:10] + [b'{"message":"all clear"}\n'] + lines[10:]) == 11


def test_swapped_adjacent_lines_are_detected(tmp_path):
    path, lines = make_log(tmp_path)
    swapped = lines[:19] + [lines[20], lines[19]] + lines[21:]
    assert first_bad(path, swapped) == 20


def test_tail_truncated_mid_line_is_detected(tmp_path):
    path, lines = make_log(tmp_path)
    assert first_bad(path, lines[:49] + [lines[49][:100]]) == 50
    res = verify_log(path)
    assert "torn" in res.problems[0].message


def test_edited_and_rehashed_record_is_detected_by_the_next_link(tmp_path):
    path, lines = make_log(tmp_path)
    forged = reseal(lines, 24, lambda r: r["guard"].update(verdict="clean"), key=None)
    assert first_bad(path, forged[:25] + lines[25:]) == 25


def test_rechain_from_the_middle_without_key_is_a_documented_limit(tmp_path):
    path, lines = make_log(tmp_path)
    path.write_bytes(b"".join(reseal(lines, 24, lambda r: r.update(message="nothing"), None)))
    assert verify_log(path).ok      # no key, full rewrite to the end: cannot be seen


@pytest.mark.parametrize("attacker_key", [None, b"guessed key"])
def test_rechain_from_the_middle_is_detected_with_hmac(tmp_path, attacker_key):
    path, lines = make_log(tmp_path, key=KEY)
    forged = reseal(lines, 24, lambda r: r["guard"].update(verdict="clean"), attacker_key)
    assert first_bad(path, forged, key=KEY) == 25


def test_problem_messages_are_single_lines_with_place(tmp_path):
    path, lines = make_log(tmp_path)
    path.write_bytes(b"".join(lines[:9] + [lines[9].replace(b"record number", b"record Number")]
                              + lines[10:12] + lines[13:]))
    res = verify_log(path)
    assert [p.seq for p in res.problems] == [10, 13]
    assert str(res.problems[0]) == ("audit.jsonl:10: record 10: hash does not match its "
                                    "content (edited)")
    for p in res.problems:
        assert re.fullmatch(r"audit\.jsonl:\d+: record \d+: [^\n]+", str(p))


def test_missing_log_raises_audit_error(tmp_path):
    with pytest.raises(AuditError) as e:
        verify_log(tmp_path / "nothing.jsonl")
    assert str(tmp_path / "nothing.jsonl") in str(e.value)


# --- hostile content ---------------------------------------------------------------------

def test_hostile_strings_stay_on_one_line_and_round_trip(tmp_path):
    path = tmp_path / "audit.jsonl"
    fake = canonical_json({"event": {"action": "allow"}, "guard": {"seq": 2}}) + "\n"
    hostile = ["two\nlines", "cr\r\nlf", "\x1b[31mred\x1b[0m\x07", fake, "\udcff", "\ud800x",
               "sep\u2028\u2029", "nul\x00", "rlo\u202efdp.exe", "emoji \U0001F600",
               'quote " and \\ backslash']
    with AuditLog(path, fsync=False) as log:
        written = [log.write({"message": s, "file": {"path": s, "name\nkey": s},
                              "event": {"action": s, "outcome": s}, "guard": {"verdict": s}})
                   for s in hostile]
        loop: dict[str, Any] = {}
        loop["self"] = loop
        odd = log.write({"message": "odd", "values": [float("nan"), float("inf"), b"\xff\x00",
                                                      Path("/x"), {3, 1}, (1, 2), 10 ** 5000,
                                                      Level.MALICIOUS, Code.TYPE_MISMATCH],
                         "verdict": HasToDict(), "loop": loop, 7: "int key"})
    raw = path.read_bytes()
    assert raw.count(b"\n") == len(hostile) + 1 and raw.isascii()
    for line, rec in zip(raw.splitlines(), written + [odd]):
        assert json.loads(line) == rec
    assert written[4]["message"] == "\ufffd" and written[5]["message"] == "\ufffdx"
    assert odd["values"] == ["nan", "inf", "/wA=", "/x", [1, 3], [1, 2], "<huge int>",
                             "malicious", "type-mismatch"]
    assert type(odd["values"][-1]) is str and odd["7"] == "int key"
    assert odd["verdict"]["path"] == "/x.pdf" and odd["verdict"]["verdict"] == "clean"
    assert verify_log(path).ok
    for rec in written:
        shown = format_record(rec)
        assert not any(ord(c) < 0x20 or c in "\x7f\u2028\u2029\u202e" for c in shown), shown


def test_format_record(tmp_path):
    rec = {"@timestamp": "2026-11-25T10:00:00.123Z",
           "event": {"action": "quarantine", "outcome": "success"},
           "file": {"path": "/home/a/Downloads/Contract.pdf"}, "guard": {"verdict": "malicious"},
           "message": "'Contract.pdf' is a Windows program, not a PDF."}
    assert format_record(rec) == ("2026-11-25T10:00:00.123Z quarantine success "
                                  "/home/a/Downloads/Contract.pdf malicious: 'Contract.pdf' "
                                  "is a Windows program, not a PDF.")
    rec["file"]["path"] = "/tmp/a\n2026-11-25T10:00:01.000Z allow success /x\x1b[2J"
    assert format_record(rec).count("\n") == 0 and "\\x0a" in format_record(rec)
    assert "\\x1b[2J" in format_record(rec)
    assert format_record({"message": "bare"}) == "- - - - bare"


# --- failures ----------------------------------------------------------------------------

def test_disk_full_raises_audit_error_and_leaves_log_verifiable(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        path = small / "log" / "audit.jsonl"
        log = AuditLog(path, max_bytes=1 << 20)
        try:
            write_records(log, 5)
            fill_disk(small / "filler")
            big = {"message": "x" * 700}
            with pytest.raises(AuditError) as e:
                for _ in range(200):
                    log.write(big)
            assert str(path) in str(e.value) and "\n" not in str(e.value)
            assert isinstance(e.value, GuardError)
            acked = log.seq
            data = path.read_bytes()
            assert data.endswith(b"\n") and data.count(b"\n") == acked
            assert verify_log(path).ok
            (small / "filler").unlink()
            assert log.write({"message": "space again"})["guard"]["seq"] == acked + 1
        finally:
            log.close()
        assert verify_log(path).ok and all_seqs(path) == list(range(1, log.seq + 1))
    finally:
        subprocess.run(["umount", str(small)], check=True)


def fill_disk(filler: Path) -> None:
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 1024)
    except OSError:
        pass
    finally:
        os.close(fd)


def test_unwritable_location_raises_audit_error(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the log folder should be")
    with pytest.raises(AuditError) as e:
        AuditLog(blocker / "audit.jsonl")
    assert str(blocker / "audit.jsonl") in str(e.value)


def test_closed_log_refuses_writes(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", fsync=False)
    log.close()
    log.close()
    with pytest.raises(AuditError, match="closed"):
        log.write({"message": "late"})


WRITER_CHILD = r"""
import sys
from pathlib import Path
from guard.audit import AuditLog
with AuditLog(Path(sys.argv[1]), max_bytes=4096, keep=1000, fsync=False) as log:
    for i in range(200):
        log.write({"message": f"{sys.argv[2]} {i}"})
"""


def test_several_writers_share_one_chain(tmp_path):
    """The daemon and a `guard` command may log at once: processes and instances
    interleave, rotate under each other, and the chain stays whole."""
    path = tmp_path / "audit.jsonl"
    a = AuditLog(path, max_bytes=4096, keep=1000, fsync=False)
    b = AuditLog(path, max_bytes=4096, keep=1000, fsync=False)
    try:
        children = [subprocess.Popen([sys.executable, "-c", WRITER_CHILD, str(path), str(n)],
                                     cwd=ROOT, stderr=subprocess.PIPE) for n in range(3)]
        for i in range(100):
            (a if i % 2 else b).write({"message": f"in-process {i}"})
        for child in children:
            assert child.wait(timeout=60) == 0, child.stderr.read() if child.stderr else ""
            if child.stderr:
                child.stderr.close()
    finally:
        a.close()
        b.close()
    res = verify_log(path)
    assert res.ok, [str(p) for p in res.problems[:5]]
    assert res.records == 700 and all_seqs(path) == list(range(1, 701))


# --- threads and following ---------------------------------------------------------------

def test_concurrent_writers_produce_one_valid_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    got: list[list[int]] = [[] for _ in range(8)]
    with AuditLog(path, max_bytes=4096, keep=1000, fsync=False) as log:
        def work(n: int) -> None:
            for i in range(150):
                got[n].append(log.write(sample_record(n * 1000 + i))["guard"]["seq"])
        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(s for g in got for s in g) == list(range(1, 1201))
    assert all(g == sorted(g) for g in got)
    res = verify_log(path)
    assert res.ok and res.records == 1200
    assert all_seqs(path) == list(range(1, 1201))


def test_iter_records_reads_all_files_oldest_first(tmp_path):
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, max_bytes=1024, keep=100, fsync=False) as log:
        write_records(log, 40)
    assert all_seqs(path) == list(range(1, 41))


def consume(path: Path, out: list[dict[str, Any]], stop: threading.Event, poll_s: float) -> None:
    for rec in iter_records(path, follow=True, poll_s=poll_s, stop=stop):
        out.append(rec)


def wait_for(cond: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


@pytest.mark.parametrize("poll_s", [0.01, 0.3])
def test_follow_sees_new_records_across_rotations(tmp_path, poll_s):
    """With a slow poll, several rotations happen between two looks."""
    path = tmp_path / "audit.jsonl"
    seen: list[dict[str, Any]] = []
    stop = threading.Event()
    with AuditLog(path, max_bytes=1024, keep=100, fsync=False) as log:
        write_records(log, 5)
        reader = threading.Thread(target=consume, args=(path, seen, stop, poll_s))
        reader.start()
        try:
            assert wait_for(lambda: len(seen) >= 5)
            write_records(log, 60, start=5)
            assert len(log_files(path)) > 10
            assert wait_for(lambda: len(seen) >= 65)
            log.write({"message": "last one"})
            assert wait_for(lambda: len(seen) >= 66)
        finally:
            stop.set()
            reader.join(timeout=10)
    assert not reader.is_alive()
    assert [r["guard"]["seq"] for r in seen] == list(range(1, 67))
    assert seen[-1]["message"] == "last one"


def test_follow_waits_for_a_log_that_does_not_exist_yet(tmp_path):
    path = tmp_path / "audit.jsonl"
    seen: list[dict[str, Any]] = []
    stop = threading.Event()
    reader = threading.Thread(target=consume, args=(path, seen, stop, 0.01))
    reader.start()
    try:
        time.sleep(0.05)
        with AuditLog(path, fsync=False) as log:
            write_records(log, 3)
        assert wait_for(lambda: len(seen) == 3)
    finally:
        stop.set()
        reader.join(timeout=10)
    assert [r["guard"]["seq"] for r in seen] == [1, 2, 3]


# --- the shipped agent signs its log: a re-chain from the middle is found -----------------

def _rechain_plain(path: Path, from_seq: int, edit) -> None:
    """An attacker without the key: edit the record *from_seq* and recompute every later
    hash (plain sha256, the only kind one can make without the key)."""
    lines = path.read_bytes().splitlines()
    out, prev = [], None
    for raw in lines:
        rec = json.loads(raw)
        g = rec["guard"]
        if g["seq"] >= from_seq:
            if g["seq"] == from_seq:
                edit(rec)
            g["prev"] = prev if prev is not None else g["prev"]
            g["alg"] = "sha256"
            body = canonical_json({**rec, "guard": {k: v for k, v in g.items() if k != "hash"}})
            g["hash"] = chain_digest(g["prev"], body, None)
            raw = canonical_json(rec).encode("ascii")
        out.append(raw)
        prev = line_digest(raw)
    path.write_bytes(b"\n".join(out) + b"\n")


def test_the_agent_signs_and_verify_finds_a_rechain_from_the_middle(agent, tmp_path):
    a = agent()
    for i in range(6):
        (tmp_path / "Downloads" / f"Invoice-{i}.pdf").write_bytes(b"MZ" + bytes(300))
    from daemon_support import wait_until
    assert wait_until(lambda: a.status()["counters"]["quarantined"] >= 6, 60)
    a.stop()
    key_file = tmp_path / "state" / "audit.key"
    assert key_file.exists() and key_file.stat().st_mode & 0o777 == 0o600
    log = tmp_path / "log" / "audit.jsonl"
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    assert recs and all(r["guard"]["alg"] == "hmac-sha256" for r in recs)
    ok = a.cli("log", "verify", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["keyed"] is True, ok.stdout

    middle = recs[len(recs) // 2]["guard"]["seq"]
    _rechain_plain(log, middle, lambda r: r.update(message="nothing happened"))
    r = a.cli("log", "verify", "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 1 and out["ok"] is False and out["first_bad_seq"] == middle, out
    # without the key the same rewrite is consistent: that is what the key is for
    plain = subprocess.run([sys.executable, "-m", "guard", "log", "verify", "--json",
                            "--file", str(log), "--config", str(a.config),
                            "--key-file", str(tmp_path / "none")], capture_output=True,
                           text=True)
    assert plain.returncode != 0 and "no such key file" in plain.stderr


def test_a_wrong_key_and_a_whole_log_rewritten_without_one_are_reported(tmp_path):
    from guard.audit.writer import load_key
    key = load_key(tmp_path / "k", create=True)
    log = tmp_path / "audit.jsonl"
    with AuditLog(log, key=key) as w:
        for i in range(5):
            w.write(sample_record(i))
    assert verify_log(log, key).ok
    other = verify_log(log, b"x" * 32)
    assert not other.ok and other.first_bad_seq == 1
    _rechain_plain(log, 1, lambda r: r.update(message="rewritten"))
    whole = verify_log(log, key)
    assert not whole.ok and whole.first_bad_seq == 1


def test_a_log_begun_before_signing_goes_on_signed(tmp_path):
    """Turning signing on for an existing log: the plain records stay verifiable, the
    first signed one covers them, and an edit among them is still found."""
    from guard.audit.writer import load_key
    log = tmp_path / "audit.jsonl"
    with AuditLog(log) as w:
        for i in range(4):
            w.write(sample_record(i))
    key = load_key(tmp_path / "k", create=True)
    with AuditLog(log, key=key) as w:
        for i in range(4, 8):
            w.write(sample_record(i))
    assert verify_log(log, key).ok
    _rechain_plain(log, 2, lambda r: r.update(message="rewritten"))   # re-chains it all
    res = verify_log(log, key)
    assert not res.ok and res.first_bad_seq is not None and res.first_bad_seq <= 5


@pytest.mark.parametrize("problem", ["world-readable", "symlink", "not-hex", "folder"])
def test_a_key_file_that_cannot_be_trusted_is_refused_clearly(tmp_path, problem):
    from guard.audit.writer import load_key
    p = tmp_path / "audit.key"
    if problem == "world-readable":
        p.write_text("ab" * 32)
        p.chmod(0o644)
    elif problem == "symlink":
        real = tmp_path / "real"
        real.write_text("ab" * 32)
        real.chmod(0o600)
        p.symlink_to(real)
    elif problem == "not-hex":
        p.write_text("not a key at all")
        p.chmod(0o600)
    else:
        p.mkdir()
    with pytest.raises(AuditError) as e:
        load_key(p, create=True)
    assert str(p) in str(e.value) and "\n" not in str(e.value)
