"""Hostile cases 11 and 12: the audit log and the allowlist edited by an attacker.

11. Audit log. A sample log (three files: two rotated, one current) is mutated the ways an
    attacker or a broken disk would: every bit flipped, records deleted, inserted (copies,
    garbage, forged records, records spliced from another log signed with the same key),
    reordered (swaps, moves, rotated files renamed), the tail truncated at any byte, the
    chain recomputed from the middle to the end. Each mutant is written to real files and
    checked by the real ``verify_log``: it must be detected, and its ``first_bad_seq``
    must be the first record that differs from the original. Both an HMAC-keyed log
    (verified with the key) and a plain one are tried. Then real writer processes rotate
    a tiny log and are SIGKILLed at a step of the rotation (every rename, folder sync,
    half-written line) or at a random moment; after a final clean writer the sequence
    across all files must run without gap or duplicate and hold every record a writer
    returned from ``write()``.

    The agent signs its log by default (``log_signing``: an HMAC key in
    state_dir/audit.key, used by every writer and by ``guard log verify``), so the keyed
    log is the log as shipped; a re-chain of it from any record must be found at that
    record. ``tests/test_audit.py`` checks the same on a real agent's log through the CLI.

    Limits, counted but not failures (see ``guard.audit.verify``): with a plain sha256
    chain (``log_signing = false``), a chain recomputed from some record to the end, or one record forged in place,
    is consistent: only the key (or the SIEM's copy) tells; a cut at a record boundary
    at the end, or records deleted at the head of the oldest rotated file, leave a shorter
    log that is still valid: the tail is caught when ``last_seq`` (the newest seq the SIEM
    holds) is given, and every cut is tried with it too.

12. Allowlist. World- or group-writable, symlinked (to a good list, a device, a folder,
    nothing), half-written, malformed (bad TOML, bad values, 100k nested brackets), 1 GB
    sparse, foreign-owned, FIFO and folder files go through the real loader and the
    daemon's ``AllowlistStore``: each is refused with a one-line error naming the file,
    the last good list stays in force, nothing unknown is ever allowed, the 1 GB file is
    not read, and an in-place edit of the same size with its mtime set back is noticed.
    Then the real agent is given each kind: it must show the error in status.json, keep
    the last good list, stay alive, and clear the error once the good file is back.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from figures import CASES, case, check
from guard.audit.verify import iter_records, verify_log
from guard.audit.writer import AuditLog, canonical_json, chain_digest, line_digest
from guard.policy.allowlist import AllowlistError, AllowlistStore, load_allowlist

REPO = Path(__file__).resolve().parents[2]
KEY = b"fleet-audit-key-0123456789abcdef"
ZEROS = "0" * 64

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux",
                                reason="the tamper cases need root on Linux")


# =====================================================================================
# case 11: the audit log
# =====================================================================================

def _split(data: bytes) -> list[bytes]:
    """Lines of *data* with their newlines (only b"\\n" ends a line, as in the log)."""
    parts = data.split(b"\n")
    lines = [p + b"\n" for p in parts[:-1]]
    return lines + [parts[-1]] if parts[-1] else lines


def _sample_record(i: int) -> dict:
    """Records shaped like the agent's, with escapes, non-ASCII names and nesting."""
    name = ["report.pdf", "caf\u00e9 menu.docx", "\u202eexe.pdf", "a\"b\\c.txt"][i % 4]
    return {"event": {"action": ["quarantine", "file-scanned", "exec-denied"][i % 3],
                      "outcome": "success", "kind": "alert" if i % 3 == 0 else "event"},
            "file": {"path": f"/home/a/Downloads/{i}-{name}", "size": 1000 + i * 7,
                     "hash": {"sha256": hashlib.sha256(str(i).encode()).hexdigest()}},
            "guard": {"verdict": ["malicious", "clean", "suspicious"][i % 3],
                      "reasons": [{"code": "type-mismatch", "severity": "malicious"}]},
            "message": f"record number {i}"}


def _sample_log(folder: Path, key: bytes | None, records: int = 9,
                first: int = 0) -> list[tuple[str, list[bytes]]]:
    """A real log in *folder* over three files; returns (file name, lines), oldest first."""
    folder.mkdir(parents=True)
    path = folder / "audit.jsonl"
    with AuditLog(path, max_bytes=1400, keep=100, fsync=False, key=key) as log:
        for i in range(records):
            log.write(_sample_record(first + i))
    names = sorted((p.name for p in folder.glob("audit.jsonl*") if p.suffix != ".lock"),
                   key=lambda n: -int(n.rsplit(".", 1)[1]) if n[-1].isdigit() else 0)
    assert len(names) >= 3, names
    return [(n, _split((folder / n).read_bytes())) for n in names]


class _Battery:
    """Writes mutants over one log folder, verifies them, keeps the figures."""

    def __init__(self, folder: Path, files: list[tuple[str, list[bytes]]],
                 key: bytes | None, label: str, fig: dict, problems: list[str]):
        self.folder, self.files, self.key, self.label = folder, files, key, label
        self.flat = [ln for _, lines in files for ln in lines]
        self.fig, self.problems = fig, problems
        self._written: dict[str, bytes] = {}

    def _install(self, files: list[tuple[str, list[bytes]]]) -> None:
        want = {name: b"".join(lines) for name, lines in files}
        for name in set(self._written) - set(want):
            (self.folder / name).unlink()
            del self._written[name]
        for name, data in want.items():
            if self._written.get(name) != data:
                (self.folder / name).write_bytes(data)
                self._written[name] = data

    def expected(self, files: list[tuple[str, list[bytes]]]) -> int | None:
        """The first seq whose line is not the original's (None: nothing changed)."""
        flat = [ln for _, lines in files for ln in lines]
        for i, (a, b) in enumerate(zip(flat, self.flat)):
            if a != b:
                return i + 1
        return None if len(flat) == len(self.flat) else min(len(flat), len(self.flat)) + 1

    def check(self, kind: str, files: list[tuple[str, list[bytes]]], *,
              expect: int | None = None, limit: bool = False, last_seq: int | None = None,
              note: str = "") -> None:
        """Verify a mutant: detected, with the first changed record as first_bad_seq.

        ``limit``: a documented blind spot: counted apart, not a failure, whatever the
        verifier says."""
        want = self.expected(files) if expect is None else expect
        if want is None:
            return                                  # the mutation changed nothing
        self._install(files)
        res = verify_log(self.folder / "audit.jsonl", key=self.key, last_seq=last_seq)
        name = f"{kind}_{self.label}"
        self.fig["mutations"] += 1
        self._bump(f"{name}_tried")
        if limit:
            self._bump(f"{name}_limit_" + ("detected" if not res.ok else "undetected"))
            return
        if res.ok:
            self.fig["undetected"] += 1
            self._problem(f"{name}: undetected ({note})")
        elif res.first_bad_seq != want:
            self.fig["wrong_first_bad"] += 1
            self._problem(f"{name}: first_bad_seq {res.first_bad_seq}, want {want} ({note}): "
                          f"{res.problems[0]}")
        else:
            self._bump(f"{name}_detected")

    def _bump(self, name: str) -> None:
        self.fig[name] = self.fig.get(name, 0) + 1

    def _problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)

    # -- mutants --

    def edited(self, fi: int, lines: list[bytes]) -> list[tuple[str, list[bytes]]]:
        out = list(self.files)
        out[fi] = (out[fi][0], lines)
        return out

    def at(self, flat_index: int) -> tuple[int, int]:
        """(file index, line index) of a flat line index (the end of the last file ok)."""
        for fi, (_, lines) in enumerate(self.files):
            if flat_index < len(lines) or fi == len(self.files) - 1:
                return fi, flat_index
            flat_index -= len(lines)
        raise AssertionError("unreachable")

    def with_flat(self, flat: list[bytes]) -> list[tuple[str, list[bytes]]]:
        """*flat* lines cut back into the original files' line counts (the last takes
        the rest)."""
        out, pos = [], 0
        for fi, (name, lines) in enumerate(self.files):
            take = len(flat) - pos if fi == len(self.files) - 1 else len(lines)
            out.append((name, flat[pos:pos + take]))
            pos += take
        return out


def _rechain(flat: list[bytes], start: int, key: bytes | None, alg: str) -> list[bytes]:
    """What an attacker does from line *start* on: renumber, relink and rehash every
    record (with *key* standing for the key the attacker has: None is plain sha256)."""
    out = list(flat[:start])
    for i in range(start, len(flat)):
        rec = json.loads(flat[i])
        chain = rec["guard"]
        chain.pop("hash")
        chain.update(seq=i + 1, alg=alg,
                     prev=line_digest(out[-1].rstrip(b"\n")) if out else ZEROS)
        chain["hash"] = chain_digest(chain["prev"], canonical_json(rec), key)
        out.append(canonical_json(rec).encode() + b"\n")
    return out


def _forge(seq: int, prev_line: bytes | None, key: bytes | None, alg: str) -> bytes:
    rec = _sample_record(9000 + seq)
    rec["guard"].update(seq=seq, alg=alg,
                        prev=line_digest(prev_line.rstrip(b"\n")) if prev_line else ZEROS)
    rec["@timestamp"] = "2030-01-01T00:00:00.000Z"
    rec["guard"]["hash"] = chain_digest(rec["guard"]["prev"], canonical_json(rec), key)
    return canonical_json(rec).encode() + b"\n"


def _mutate_log(b: _Battery, flips: int | None, others: int, rng: random.Random,
                foreign: list[bytes]) -> None:
    """Every mutation kind on one sample log: *flips* random bit flips (None: every bit
    of every file), and about *others* mutants of the other kinds."""
    n = len(b.flat)
    keyed = b.key is not None
    # 1. bit flips: every bit of every file when flip_all, else a random sample
    spots = [(fi, byte, bit) for fi, (_, lines) in enumerate(b.files)
             for byte in range(sum(map(len, lines))) for bit in range(8)]
    if flips is not None:
        spots = rng.sample(spots, min(len(spots), flips))
    for fi, byte, bit in spots:
        data = bytearray(b"".join(b.files[fi][1]))
        data[byte] ^= 1 << bit
        b.check("flip", b.edited(fi, _split(bytes(data))), note=f"file {fi} byte {byte}")
    per_kind = max(1, others // 9)
    for _ in range(per_kind):
        # 2. delete a run of records (not the oldest file's head, not through the end)
        i = rng.randrange(1, n - 1)
        k = rng.randint(1, min(3, n - 1 - i))
        b.check("delete", b.with_flat(b.flat[:i] + b.flat[i + k:]), note=f"{i}+{k}")
        # ... a whole middle file
        if rng.random() < 0.1:
            b.check("delete", b.files[:1] + b.files[2:], note="middle file")
        # 3. insert: a copy, garbage, a forged record, a record of another log
        i = rng.randrange(0, n + 1)
        what = rng.choice(["copy", "garbage", "forged", "foreign"])
        if what == "copy":
            line = b.flat[rng.randrange(n)]
        elif what == "garbage":
            line = rng.choice([b'{"message":"all clear"}\n', b"\n", b"x" * 40 + b"\n",
                               rng.randbytes(rng.randint(1, 200)).replace(b"\n", b"") + b"\n"])
        elif what == "forged":
            line = _forge(i + 1, b.flat[i - 1] if i else None,
                          rng.choice([None, b"guessed key"]),
                          rng.choice(["sha256", "hmac-sha256"]))
        else:
            line = foreign[min(i, len(foreign) - 1)]
        expect, limit = None, False
        if what == "forged" and not keyed:
            limit = True     # a record made like the writer makes it: only a key tells
        elif what == "foreign" and json.loads(line)["guard"]["seq"] == i + 1:
            if i == 0:
                # another log's valid first record put first: it is seq 1 and ours the
                # duplicate; only the host name inside tells (detected, placed one late)
                limit = True
            else:
                # valid on its own, only its link to the line before breaks: the verifier
                # blames the earlier of the two, the safe side
                expect = i
        b.check("insert", b.with_flat(b.flat[:i] + [line] + b.flat[i:]), expect=expect,
                limit=limit, note=f"{what} at {i}")
        # 4. reorder: swap two, move one, rotated files renamed
        i, j = sorted(rng.sample(range(n), 2))
        if rng.random() < 0.5:
            j = min(i + 1, n - 1)
        flat = list(b.flat)
        flat[i], flat[j] = flat[j], flat[i]
        b.check("reorder", b.with_flat(flat), note=f"swap {i} {j}")
        flat = list(b.flat)
        line = flat.pop(rng.randrange(n))
        flat.insert(rng.randrange(n), line)
        b.check("reorder", b.with_flat(flat), note="move")
        if rng.random() < 0.1:
            (n0, l0), (n1, l1) = b.files[0], b.files[1]
            b.check("reorder", [(n0, l1), (n1, l0)] + b.files[2:], note="files renamed")
        # 5. truncate the tail at any byte: of the current file, or of a rotated one
        fi = len(b.files) - 1 if rng.random() < 0.8 else rng.randrange(len(b.files) - 1)
        data = b"".join(b.files[fi][1])
        cut = rng.randrange(0, len(data))
        mutant = b.edited(fi, _split(data[:cut]))
        at_boundary = cut == 0 or data[cut - 1:cut] == b"\n"
        # inside the oldest file's first line: its head is gone, and where the log began
        # is unknown (detected, placed at the first record that survives)
        whole_oldest = fi == 0 and cut < len(b.files[0][1][0])
        b.check("truncate", mutant, note=f"file {fi} at {cut}",
                limit=whole_oldest or (at_boundary and fi == len(b.files) - 1))
        b.check("truncate_anchored", mutant, last_seq=n, limit=whole_oldest,
                note=f"file {fi} at {cut}")
        # 6. re-chain from the middle to the end, after an edit, a delete or an insert
        i = rng.randrange(0, n)
        flat = list(b.flat)
        edit = rng.choice(["edit", "delete", "insert"])
        if edit == "edit":
            rec = json.loads(flat[i])
            rec["guard"]["verdict"] = "clean"
            rec["message"] = "nothing to see"
            flat[i] = canonical_json(rec).encode() + b"\n"
        elif edit == "delete" and i < n - 1:
            del flat[i]
        else:
            flat.insert(i, _forge(i + 1, None, None, "sha256"))
        attacker = rng.choice([(None, "sha256"), (b"guessed key", "hmac-sha256"),
                               (b"", "hmac-sha256")])
        b.check("rechain", b.with_flat(_rechain(flat, i, *attacker)), limit=not keyed,
                note=f"{edit} at {i}, attacker key {attacker[0]!r}")
    # the oldest file's head: documented blind spot when rotated files exist
    for k in range(1, 3):
        b.check("delete_oldest_head", b.with_flat(b.flat[k:]), limit=True, note=str(k))


def _audit_battery(n: int, workdir: Path, fig: dict, problems: list[str]) -> None:
    """Half of *n* per log (keyed, plain): every bit flipped when that fits in two thirds
    of it, else a quarter of *n* flips per log; the rest other kinds."""
    rng = random.Random(11)
    for key, label in ((KEY, "keyed"), (None, "plain")):
        folder = workdir / f"sample-{label}"
        files = _sample_log(folder, key)
        foreign = [ln for _, lines in _sample_log(workdir / f"other-{label}", key,
                                                  first=500) for ln in lines]
        battery = _Battery(folder, files, key, label, fig, problems)
        bits = 8 * sum(len(ln) for ln in battery.flat)
        if n // 2 >= bits * 1.2:
            flips, others = None, n // 2 - bits
        else:
            flips = others = n // 4
        _mutate_log(battery, flips, max(90, others), rng, foreign)
        fig[f"sample_bytes_{label}"] = bits // 8
        fig["every_bit_flipped"] = int(flips is None)


# --- kill -9 during rotation ------------------------------------------------------------

_WRITER = r'''
import os, sys, time
from pathlib import Path
import guard.audit.writer as w

path, max_bytes, keep, stop_at, records, tag = sys.argv[1:7]
stop_at, records = int(stop_at), int(records)
steps = [0]

def step(name):
    steps[0] += 1
    if steps[0] == stop_at:
        sys.stdout.write(f"STOP {name}\n")
        sys.stdout.flush()
        time.sleep(3600)                     # the parent kills us here

real_rename, real_sync, real_write_all = os.rename, w._sync_dir, w._write_all

def rename(a, b):
    step("rename")
    real_rename(a, b)
    step("renamed")

def sync_dir(folder):
    step("sync-dir")
    real_sync(folder)

def write_all(fd, data):
    half = len(data) // 2
    real_write_all(fd, data[:half])
    step("half-written")
    real_write_all(fd, data[half:])

os.rename, w._sync_dir, w._write_all = rename, sync_dir, write_all
log = w.AuditLog(Path(path), max_bytes=int(max_bytes), keep=int(keep), fsync=True)
print("OPEN", log.seq, flush=True)
for i in range(records):
    rec = log.write({"message": f"{tag} record {i}", "event": {"action": "file-scanned"},
                     "file": {"path": f"/home/a/Downloads/{tag}-{i}.pdf"}})
    print("ACK", rec["guard"]["seq"], rec["guard"]["hash"], flush=True)
log.close()
print("DONE", flush=True)
'''

_ROTATION_STEPS = ("rename", "renamed", "sync-dir")


def _run_writer(path: Path, keep: int, stop_at: int, records: int, tag: str,
                kill_after_s: float | None) -> tuple[list[tuple[int, str]], str, int]:
    """One writer process: (acknowledged (seq, hash), where it was stopped, exit code)."""
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), "900", str(keep),
                             str(stop_at), str(records), tag],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    stopped = ""
    guard_timer = threading.Timer(30.0, proc.kill)      # a hung writer is a failure
    guard_timer.start()
    try:
        if kill_after_s is not None:
            time.sleep(kill_after_s)
            proc.send_signal(signal.SIGKILL)
        out_lines = []
        for raw in proc.stdout:
            line = raw.decode(errors="replace").strip()
            out_lines.append(line)
            if line.startswith("STOP "):
                stopped = line[5:]
                proc.send_signal(signal.SIGKILL)
        proc.wait()
        err = proc.stderr.read().decode(errors="replace")
    finally:
        guard_timer.cancel()
        proc.stdout.close()
        proc.stderr.close()
    acked = [(int(p[1]), p[2]) for p in (ln.split() for ln in out_lines)
             if len(p) == 3 and p[0] == "ACK"]
    code = proc.returncode
    if code not in (0, -signal.SIGKILL) or (code == 0 and "DONE" not in out_lines) or \
            (code != 0 and "Traceback" in err):
        stopped = f"error {code}: {err.strip()[-300:]}"
    return acked, stopped, code


def _log_lines(path: Path) -> list[dict]:
    files = sorted(path.parent.glob(path.name + ".*"),
                   key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 1)
    out = []
    for f in [f for f in files if f.suffix[1:].isdigit()] + [path]:
        if f.exists():
            out += [json.loads(ln) for ln in f.read_bytes().split(b"\n") if ln]
    return out


def _kill_batch(folder: Path, cycles: int, keep: int, rng: random.Random, fig: dict,
                problems: list[str]) -> None:
    folder.mkdir(parents=True)
    path = folder / "audit.jsonl"
    acked: dict[int, str] = {}
    for c in range(cycles):
        if rng.random() < 0.75:     # at a step: mostly rotation renames, syncs, half lines
            got, stopped, code = _run_writer(path, keep, rng.randint(1, 60), 40, f"c{c}",
                                             None)
        else:                       # at a random moment (start-up and recovery included)
            got, stopped, code = _run_writer(path, keep, 0, 10_000, f"c{c}",
                                             rng.uniform(0.12, 0.5))
        fig["kill_cycles"] += 1
        if stopped.startswith("error"):
            fig["writer_errors"] += 1
            problems.append(f"cycle {c}: {stopped}")
        elif stopped in _ROTATION_STEPS:
            fig["killed_in_rotation"] += 1
        elif stopped == "half-written":
            fig["killed_mid_line"] += 1
        elif code == -signal.SIGKILL:
            fig["killed_at_random"] += 1
        for seq, digest in got:
            if acked.get(seq, digest) != digest:
                # a seq handed out twice with different records: a duplicate in the making
                fig["duplicates"] += 1
                problems.append(f"seq {seq} acknowledged twice with different records")
            acked[seq] = digest
    got, stopped, _ = _run_writer(path, keep, 0, 5, "final", None)
    if stopped:
        fig["writer_errors"] += 1
        problems.append(f"final writer: {stopped}")
    acked.update(got)
    recs = _log_lines(path)
    seqs = [r["guard"]["seq"] for r in recs]
    for a, b in zip(seqs, seqs[1:]):
        if b == a + 1:
            continue
        if b <= a:
            fig["duplicates"] += 1
            problems.append(f"{folder.name}: seq {b} after {a}")
        else:
            fig["gaps"] += 1
            problems.append(f"{folder.name}: gap {a} -> {b}")
    if keep >= 1000 and seqs and seqs[0] != 1:
        fig["gaps"] += 1
        problems.append(f"{folder.name}: starts at seq {seqs[0]}")
    on_disk = {r["guard"]["seq"]: r["guard"]["hash"] for r in recs}
    oldest = seqs[0] if seqs else 1
    lost = [s for s, h in acked.items() if s >= oldest and on_disk.get(s) != h]
    fig["acknowledged_lost"] += len(lost)
    if lost:
        problems.append(f"{folder.name}: acknowledged records lost: {lost[:5]}")
    read = [r.get("guard", {}).get("seq") for r in iter_records(path)]
    if read != seqs:
        fig["reader_disagrees"] += 1
        problems.append(f"{folder.name}: iter_records gives another sequence")
    res = verify_log(path)
    if not res.ok:
        fig["verify_failed_after_kills"] += 1
        problems.append(f"{folder.name}: verify: {res.problems[0]}")
    fig["records_after_kills"] += len(seqs)
    fig["rotated_files"] += len(list(folder.glob("audit.jsonl.*"))) - 1


@case("11", "audit log: tampering detected, kill -9 while rotating", fast=4000,
      full=110_000, unit="mutations")
def case_audit_tamper(n: int, workdir: Path) -> dict:
    """Mutants of a keyed and a plain log through verify_log (every bit flipped at full
    size); then writer processes killed during rotation, in batches of 20 cycles (half
    keeping every file, half keep=3 so the oldest is dropped while they die)."""
    fig = dict(failures=0, mutations=0, undetected=0, wrong_first_bad=0, kill_cycles=0,
               killed_in_rotation=0, killed_mid_line=0, killed_at_random=0, gaps=0,
               duplicates=0, acknowledged_lost=0, reader_disagrees=0,
               verify_failed_after_kills=0, writer_errors=0, records_after_kills=0,
               rotated_files=0)
    problems: list[str] = []
    _audit_battery(n, workdir / "battery", fig, problems)
    rng = random.Random(1111)
    cycles = max(20, n // 400)
    for start in range(0, cycles, 20):
        _kill_batch(workdir / f"kill-{start}", min(20, cycles - start),
                    1000 if (start // 20) % 2 == 0 else 3, rng, fig, problems)
    fig["failures"] = (fig["undetected"] + fig["wrong_first_bad"] + fig["gaps"]
                       + fig["duplicates"] + fig["acknowledged_lost"]
                       + fig["reader_disagrees"] + fig["verify_failed_after_kills"]
                       + fig["writer_errors"])
    if problems:
        fig["first_problems"] = "; ".join(problems[:3])
    return fig


# =====================================================================================
# case 12: the allowlist
# =====================================================================================

H = [hashlib.sha256(f"tool {i}".encode()).hexdigest() for i in range(8)]
TODAY = dt.date(2026, 6, 1)


def _entry(kind: str, value: str, reason: str = "ticket SEC-1", by: str = "alice") -> str:
    return f'[[allow]]\n{kind} = "{value}"\nreason = "{reason}"\nadded_by = "{by}"\n\n'


GOOD_A = ("# allowlist A\n" + _entry("sha256", H[0]) + _entry("path", "/opt/tools/*.sh")
          + _entry("signer", "Contoso Ltd"))
GOOD_B = ("# allowlist B\n" + _entry("sha256", H[1]) + _entry("sha256", H[2])
          + _entry("path", "/srv/app/bin/run") + _entry("signer", "Fabrikam Inc")
          + _entry("sha256", H[3], 'a reason with \\"quotes\\" and [brackets]'))
ADMIN_WROTE = {(k, v) for text in (GOOD_A, GOOD_B)        # grows with same-size edits
               for k, v in re.findall(r'(sha256|path|signer) = "([^"]*)"', text)}

MALFORMED = [
    ("bad TOML", "[[allow]]\nsha256 = \"" + H[4] + "\nreason = \"r\"\n"),
    ("bad TOML", "[[allow]\n"),
    ("bad TOML", "= = =\n"),
    ("not UTF-8", _entry("sha256", H[4]).encode() + b"# \xff\xfe\n"),
    ("NUL", b"[[allow]]\x00\n"),
    ("unknown key", 'allow_all = true\n'),
    ("unknown key", _entry("sha256", H[4]) + 'everything = true\n'),
    ("no kind", '[[allow]]\nreason = "r"\nadded_by = "a"\n'),
    ("two kinds", '[[allow]]\nsha256 = "' + H[4] + '"\npath = "/*"\nreason = "r"\n'
     'added_by = "a"\n'),
    ("short hash", _entry("sha256", H[4][:63])),
    ("relative glob", _entry("path", "*")),
    ("empty signer", _entry("signer", "")),
    ("no reason", '[[allow]]\npath = "/*"\nadded_by = "a"\n'),
    ("wrong shape", "[allow]\npath = \"/*\"\nreason = \"r\"\nadded_by = \"a\"\n"),
    ("wrong shape", "allow = 5\n"),
    ("wrong shape", "allow = [\"/*\"]\n"),
    ("duplicate key", '[[allow]]\npath = "/x"\npath = "/*"\nreason = "r"\nadded_by = "a"\n'),
    ("deep arrays", "a = " + "[" * 100_000),
    ("deep tables", "a = " + "{b = " * 100_000),
    ("deep, closed", "a = " + "[" * 5000 + "]" * 5000 + "\n"),
    ("deep, 4 MiB", "x = " + "[" * (4 * 1024 * 1024 - 8)),
]


def _proc_rchar() -> int:
    with open("/proc/self/io") as fh:
        for line in fh:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    return 0


def _place(path: Path, data: str | bytes, mode: int = 0o640) -> None:
    """Atomically put *data* at *path* (whatever is there: link, FIFO, folder)."""
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chmod(tmp, mode)
    _clear(path)
    os.replace(tmp, path)


def _clear(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        os.rmdir(path)
    else:
        path.unlink(missing_ok=True)


def _hostile(kind: str, path: Path, rng: random.Random, side: Path) -> tuple[str, str]:
    """Put a hostile allowlist of *kind* at *path*; returns (words the error must hold,
    a label)."""
    if kind == "writable":
        mode = rng.choice([0o666, 0o646, 0o660, 0o620, 0o602])
        _place(path, GOOD_B, mode)
        return "writable by group or others", f"mode {mode:o}"
    if kind == "symlink":
        target = rng.choice([side / "good.toml", Path("/dev/zero"), side / "nothing", side])
        _clear(path)
        os.symlink(target, path)
        return "symbolic link", str(target)
    if kind == "half-written":
        data = GOOD_B.encode()
        cut = rng.randrange(1, len(data))
        _place(path, data[:cut])
        return "", f"cut at {cut}"
    if kind == "malformed":
        label, text = rng.choice(MALFORMED)
        _place(path, text)
        return "", label
    if kind == "huge":
        size = rng.choice([1 << 30, 4 * 1024 * 1024 + 1])
        _place(path, b"")
        with open(path, "r+b") as fh:
            fh.truncate(size)                 # sparse: no block written
        return "larger than 4 MiB", f"{size} bytes"
    if kind == "foreign-owner":
        _place(path, GOOD_B)
        os.chown(path, 65534, 65534)
        return "owned by", "uid 65534"
    if kind == "fifo":
        _clear(path)
        os.mkfifo(path, 0o640)
        return "not a regular file", "FIFO"
    if kind == "folder":
        _clear(path)
        os.mkdir(path, 0o750)
        return "not a regular file", "folder"
    raise AssertionError(kind)


HOSTILE_KINDS = ("writable", "symlink", "half-written", "malformed", "huge", "foreign-owner",
                 "fifo", "folder")


def _same_size_edit(path: Path, rng: random.Random) -> str:
    """Rewrite one hex digit of the first sha256 in place, keeping size and mtime (what
    `touch -r`, `rsync -t` or tar leave); returns the new text."""
    st = os.stat(path)
    text = path.read_text()
    m = re.search(r'sha256 = "([0-9a-f]{64})"', text)
    assert m
    pos = m.start(1) + rng.randrange(64)
    new_digit = rng.choice([c for c in "0123456789abcdef" if c != text[pos]])
    text = text[:pos] + new_digit + text[pos + 1:]
    with open(path, "r+b") as fh:
        fh.write(text.encode())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    ADMIN_WROTE.add(("sha256", text[m.start(1):m.end(1)]))
    return text


def _allows_unknown(allowlist) -> bool:
    """Whether the list allows something no admin wrote (the mark of allow-all)."""
    probes = [(hashlib.sha256(os.urandom(8)).hexdigest(), "/home/u/Downloads/x.exe",
               ["Evil Corp"]), ("0" * 64, "/tmp/a", []), (H[7], "/", ["Contoso"])]
    if any(allowlist.match(s, p, g, TODAY) for s, p, g in probes):
        return True
    return any((e.kind, e.value) not in ADMIN_WROTE for e in allowlist.entries)


def _allowlist_store_rounds(n: int, workdir: Path, fig: dict, problems: list[str]) -> None:
    rng = random.Random(12)
    side = workdir / "side"
    side.mkdir(parents=True)
    (side / "good.toml").write_text(GOOD_B)
    os.chmod(side / "good.toml", 0o640)
    path = workdir / "etc" / "allowlist.toml"
    path.parent.mkdir()
    _place(path, GOOD_A)
    store = AllowlistStore(path)
    store.reload()
    good_text = GOOD_A
    assert store.error is None and len(store.current) == 3

    def note(text: str) -> None:
        if len(problems) < 20:
            problems.append(text)

    for i in range(n):
        kind = HOSTILE_KINDS[i % len(HOSTILE_KINDS)]
        words, label = _hostile(kind, path, rng, side)
        before = store.current
        rchar = _proc_rchar()
        started = time.monotonic()
        try:
            changed, err = store.reload()
        except Exception as exc:            # anything but AllowlistError is a crash
            fig["crashed"] += 1
            note(f"{kind} ({label}): {type(exc).__name__}: {str(exc)[:80]}")
            continue
        fig["reload_s_max"] = max(fig["reload_s_max"], round(time.monotonic() - started, 3))
        read = _proc_rchar() - rchar
        err = err or store.error     # a refusal like the one before is reported once
        fig["tried"] += 1
        fig[f"{kind}_tried"] = fig.get(f"{kind}_tried", 0) + 1
        if kind == "huge":
            fig["huge_bytes_read_max"] = max(fig["huge_bytes_read_max"], read)
            if read > 64 * 1024:
                fig["huge_read"] += 1
                note(f"huge ({label}): {read} bytes read")
        if err is None:
            cur = store.current
            prefix = [(e.kind, e.value, e.reason, e.added_by) for e in cur.entries]
            full = [(e.kind, e.value, e.reason, e.added_by)
                    for e in load_allowlist(side / "good.toml").entries]
            if kind == "half-written" and prefix == full[:len(prefix)]:
                fig["half_written_valid_prefix"] += 1   # a whole file of whole entries
                good_text = path.read_text()
            else:
                fig["accepted_bad"] += 1
                note(f"{kind} ({label}): accepted, {len(cur)} entries")
        else:
            fig["refused"] += 1
            text = str(err)
            if not isinstance(err, AllowlistError) or "\n" in text or str(path) not in text \
                    or words not in text:
                fig["unclear_error"] += 1
                note(f"{kind} ({label}): unclear error {text[:120]!r}")
            if store.current is not before or store.error is None:
                fig["last_good_lost"] += 1
                note(f"{kind} ({label}): the list in force changed on a refusal")
        if _allows_unknown(store.current):
            fig["allow_all"] += 1
            note(f"{kind} ({label}): something unknown is allowed")
        if i % 3 == 2:
            # a good list again (sometimes the very one in force: the error must clear),
            # then, half the time, an in-place edit of the same size with the mtime set back
            good_text = rng.choice([GOOD_A, GOOD_B, good_text])
            _place(path, good_text)
            steps = [("good list", None)]
            if rng.random() < 0.5 and 'sha256 = "' in good_text:
                steps.append(("same-size edit", _same_size_edit))
            for what, edit in steps:
                if edit is not None:
                    good_text = edit(path, rng)      # at once: within the same clock tick
                try:
                    store.reload()
                except Exception as exc:
                    fig["crashed"] += 1
                    note(f"{what}: {type(exc).__name__}")
                    break
                want = hashlib.sha256(good_text.encode()).hexdigest()
                fig["good_restored"] += 1
                if store.error is not None:
                    fig["good_refused"] += 1
                    note(f"{what}: refused: {store.error}")
                elif store.current.fingerprint != want:
                    fig["edits_missed"] += 1
                    note(f"{what}: not noticed; the old list stays in force")
    # a first load that is hostile: an empty list, never allow-all
    for kind in HOSTILE_KINDS:
        fresh = workdir / f"fresh-{kind}.toml"
        _hostile(kind, fresh, rng, side)
        store = AllowlistStore(fresh)
        try:
            _, err = store.reload()
        except Exception as exc:
            fig["crashed"] += 1
            note(f"first load {kind}: {type(exc).__name__}")
            continue
        if len(store.current) and kind != "half-written":
            fig["accepted_bad"] += 1
            note(f"first load {kind}: {len(store.current)} entries")
        if _allows_unknown(store.current):
            fig["allow_all"] += 1
        _clear(fresh)


def _agent_allowlist(workdir: Path, rounds: int, fig: dict, problems: list[str]) -> None:
    """The real agent: each hostile kind in turn, then the good list back."""
    sys.path.insert(0, str(REPO / "tests"))
    from daemon_support import Agent, wait_until, write_config

    base = workdir / "agent"
    base.mkdir()
    path = base / "allowlist.toml"
    _place(path, GOOD_A)
    side = workdir / "agent-side"
    side.mkdir()
    (side / "good.toml").write_text(GOOD_B)
    os.chmod(side / "good.toml", 0o640)
    agent = Agent(base, write_config(base, "enforce")).start()
    rng = random.Random(1212)

    def allowlist_status() -> dict:
        st = agent.status() or {}
        return st.get("allowlist") or {}

    def note(text: str) -> None:
        if len(problems) < 20:
            problems.append(text)

    try:
        if not wait_until(lambda: allowlist_status().get("entries") == 3, 10):
            fig["agent_failures"] += 1
            note("agent: the good list never loaded")
        kinds = [k for k in HOSTILE_KINDS if k != "half-written"] + ["deep"]
        for r in range(rounds):
            for kind in kinds:
                if kind == "deep":
                    _place(path, "a = " + "[" * 100_000)
                    words = "nested too deeply"
                else:
                    words, _ = _hostile(kind, path, rng, side)
                fig["agent_hostile_files"] += 1
                got = wait_until(lambda: words in (allowlist_status().get("error") or ""), 8)
                st = allowlist_status()
                if not got:
                    fig["agent_failures"] += 1
                    note(f"agent, {kind}: no error shown (status: {st.get('error')!r})")
                if st.get("entries") != 3:
                    fig["agent_failures"] += 1
                    note(f"agent, {kind}: {st.get('entries')} entries in force, want 3")
                _place(path, GOOD_A)          # the very list in force: the error must go
                if not wait_until(lambda: allowlist_status().get("error") == "", 8):
                    fig["agent_stale_errors"] += 1
                    note(f"agent, after {kind}: the error stays once the file is good")
                if agent.proc.poll() is not None:
                    fig["agent_failures"] += 1
                    note(f"agent died after {kind}")
                    return
            # an in-place edit with mtime set back must be noticed by the agent too
            text = _same_size_edit(path, rng)
            want = hashlib.sha256(text.encode()).hexdigest()

            def loaded() -> bool:
                return any(r.get("event", {}).get("action") == "allowlist-reload"
                           and r.get("guard", {}).get("fingerprint") == want
                           for r in agent.records())
            if not wait_until(loaded, 8):
                fig["agent_failures"] += 1
                note("agent: a same-size edit with its mtime set back was not loaded")
            _place(path, GOOD_A)
            wait_until(lambda: allowlist_status().get("error") == "", 5)
        before = (agent.status() or {}).get("updated_at", 0)
        time.sleep(0.1)
        (base / "Downloads" / "poke.txt").write_text("hello")   # the housekeeper still runs
        if not wait_until(lambda: (agent.status() or {}).get("updated_at", 0) > before, 15):
            fig["agent_failures"] += 1
            note("agent: status.json no longer updated (housekeeper dead?)")
        refusals = [r for r in agent.records()
                    if r.get("event", {}).get("action") == "allowlist-reload"
                    and r.get("event", {}).get("outcome") == "failure"]
        fig["agent_refusals_logged"] = len(refusals)
    finally:
        with contextlib.suppress(Exception):
            agent.stop()


@case("12", "allowlist: unsafe and broken files refused", fast=400, full=20_000,
      unit="files")
def case_allowlist_hostile(n: int, workdir: Path) -> dict:
    """*n* hostile files through the daemon's AllowlistStore (a good list or a same-size
    edit every third), a hostile first load of each kind, then each kind given to the
    real agent (twice at full size)."""
    fig = dict(failures=0, tried=0, refused=0, half_written_valid_prefix=0, good_restored=0,
               crashed=0, accepted_bad=0, unclear_error=0, last_good_lost=0, allow_all=0,
               huge_read=0, huge_bytes_read_max=0, edits_missed=0, good_refused=0,
               reload_s_max=0.0, agent_hostile_files=0, agent_failures=0,
               agent_stale_errors=0)
    problems: list[str] = []
    _allowlist_store_rounds(n, workdir, fig, problems)
    _agent_allowlist(workdir, 2 if n >= 5000 else 1, fig, problems)
    fig["failures"] = (fig["crashed"] + fig["accepted_bad"] + fig["unclear_error"]
                       + fig["last_good_lost"] + fig["allow_all"] + fig["huge_read"]
                       + fig["edits_missed"] + fig["good_refused"] + fig["agent_failures"]
                       + fig["agent_stale_errors"])
    if problems:
        fig["first_problems"] = "; ".join(problems[:3])
    return fig


# =====================================================================================
# pytest: each case at its CI count
# =====================================================================================

def test_case_11_audit_tamper(tmp_path):
    check(case_audit_tamper(CASES["11"].fast, tmp_path))


def test_case_12_allowlist_hostile(tmp_path):
    check(case_allowlist_hostile(CASES["12"].fast, tmp_path))
