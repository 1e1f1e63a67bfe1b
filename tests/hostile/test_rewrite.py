"""Hostile cases 7 and 8: content that changes under the guard.

7. A file changed after it was allowed, in every way that keeps it looking the same: a
   rewrite in place (same size, the mtime put back with utime), a rename-over (a new
   inode with the old times), removed and made again (the inode number comes back, with
   the old times) and a rewrite through a shared writable mapping (no timestamp changes
   at all); the other way round, a program judged malicious and renamed (a new ctime, the
   same content) keeps its verdict. Against the real agent in enforce mode with fanotify launch control, on
   folders made here: an allowlisted program or script runs once; after the change the
   new content, not on the allowlist, must be refused (a decision made for the old
   content must not be reused), and the agent must scan the new content (a document
   rewritten into a disguised program is quarantined). The disguised program sits in a
   folder a path entry allows: renamed there to a plain name, it must still be refused.
8. A file changing while it is scanned: writer processes rewrite one file between two
   contents of the same size (a PDF and a PE named .pdf): in place, truncating first, or
   through one descriptor they keep open, pausing between chunks, while the scanner scans
   it again and again. A verdict may be given only for content that was whole during the
   read: its sha256 must be one of the two contents' and its level that content's. A
   verdict for anything else (mixed or cut content) is a failure; "the file changed while
   it was being scanned" (no verdict) is the right answer then.

The samples are the corpus's benign programs (a copy of /bin/true, a Windows PE) under
other names; nothing here is malware. Every process started (agents, writers, launched
programs) is stopped or waited for.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from builders import EXE, pdf_with
from daemon_support import Agent, wait_until, write_config
from figures import case, check

import guard.scanner as scanner_module
from guard.scanner import Scanner, load_rules
from guard.sources import fanotify

FAN_OK, FAN_WHY = fanotify.available()
needs_fanotify = pytest.mark.skipif(not FAN_OK, reason=f"fanotify: {FAN_WHY}")
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux",
                                reason="the rewrite cases need root on Linux")
SCAN_WAIT_S = 60.0         # the agent's scan of a file (settle 0.3 s) on a loaded machine
EXEC_TIMEOUT_S = 30.0


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- case 7 -------------------------------------------------------------------------------

def _padded(base: bytes, tail: bytes, size: int) -> bytes:
    return base + tail.ljust(size - len(base), b"\0")


def _contents() -> dict[str, bytes]:
    """Pairs of same-size contents: *_a is allowed (or clean), *_b replaces it."""
    true = Path("/bin/true").read_bytes()
    size = len(true) + 64
    pe = (EXE / "pe" / "cli-64.exe").read_bytes()
    pdf = pdf_with()
    pdf = pdf.replace(b"%PDF-1.4\n", b"%PDF-1.4\n%" + b"x" * (len(pe) - len(pdf) - 2) + b"\n")
    assert len(pdf) == len(pe)
    script_a = b"#!/bin/sh\necho A-RAN\n"
    script_b = b"#!/bin/sh\necho B-RAN\n"
    return {
        "elf_a": _padded(true, b"\0guard test: the allowed program\0", size),
        "elf_b": _padded(true, b"\0guard test: the rewritten program\0", size),
        "sh_a": script_a + b"# " + b"-" * 200 + b"\n",
        "sh_b": script_b + b"# " + b"-" * 200 + b"\n",
        "pdf_a": pdf,
        "pe_b": pe,       # a program named .pdf: malicious, quarantined
    }


def _allowlist(base: Path, sha256s: list[str], globs: list[str]) -> None:
    lines = []
    for key, value in [("sha256", h) for h in sha256s] + [("path", g) for g in globs]:
        lines += ["[[allow]]", f'{key} = "{value}"', 'reason = "hostile test"',
                  'added_by = "tests"', ""]
    (base / "allowlist.toml").write_text("\n".join(lines))


@contextlib.contextmanager
def _agent(base: Path, allow: list[str], globs: list[str]) -> Iterator[Agent]:
    """The real agent in enforce mode on base/Downloads (fanotify launch control, every
    scan logged, a generous decision deadline: a refusal here is never the fail mode's)."""
    base.mkdir(parents=True, exist_ok=True)
    _allowlist(base, allow, globs)
    extra = ('launch_control = "fanotify"\ndecision_timeout_s = 10\nfail_mode = "open"\n'
             'log_clean = true')
    a = Agent(base, write_config(base, "enforce", extra))
    try:
        a.start()
        yield a
    finally:
        if a.proc is not None and a.proc.poll() is None:
            try:
                a.stop(timeout=20)
            except subprocess.TimeoutExpired:
                pass                       # stop() killed it


def _scanned(records: list[dict]) -> set[tuple[str, str]]:
    """(path, sha256) of every file the agent scanned (not launch records)."""
    return {(r.get("file", {}).get("path", ""), r.get("file", {}).get("hash", {}).get("sha256", ""))
            for r in records if not r.get("event", {}).get("action", "").startswith("exec-")}


def _exec(argv: list[str]) -> tuple[str, str]:
    """("ran" | "refused" | "busy" | "failed", output) for one launch, waited for."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=EXEC_TIMEOUT_S,
                           check=False)
    except PermissionError:
        return "refused", ""
    except OSError as exc:
        return ("busy" if exc.errno == errno.ETXTBSY else f"failed:{exc.errno}"), ""
    return ("ran" if r.returncode == 0 else "failed"), r.stdout + r.stderr


def _write(path: Path, data: bytes, mode: int = 0o755) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, mode)


def _rewrite_in_place(path: Path, data: bytes) -> None:
    """New content, same size, and the old atime and mtime put back."""
    st = os.stat(path)
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@contextlib.contextmanager
def _dirty_mapping(path: Path, data: bytes) -> Iterator[mmap.mmap]:
    """A shared writable mapping of *path* whose pages are dirty already (written with
    *data*, which is what the file holds): later writes through it change the file's
    content without touching its timestamps until the pages are written back."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        m = mmap.mmap(fd, len(data), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    try:
        m[:] = data
        yield m
    finally:
        m.close()


def _same_stamps(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_ino, a.st_size, a.st_mtime_ns, a.st_ctime_ns) == (
        b.st_ino, b.st_size, b.st_mtime_ns, b.st_ctime_ns)


@case("7", "rewritten after allowed: in place, rename-over, mapping", fast=3, full=100)
def run_rewritten(n: int, workdir: Path) -> dict:
    if not FAN_OK:
        return {"failures": 1, "error": f"fanotify unavailable: {FAN_WHY}"}
    c = _contents()
    sha = {k: _sha256(v) for k, v in c.items()}
    base = workdir / "rewrite"
    watched, keep, stage = base / "Downloads", base / "keep", base / "stage"
    tools = watched / "tools"              # allowed by a path entry
    for d in (watched, keep, stage, tools):
        d.mkdir(parents=True, exist_ok=True)
    f: dict[str, Any] = {"iterations": n, "allowed_ran": 0, "allowed_refused": 0,
                         "in_place_ran": 0, "rename_over_ran": 0, "recreated_ran": 0,
                         "inode_reused": 0, "mapping_silent": 0, "script_mapping_ran": 0,
                         "exec_busy": 0, "exec_mapping_ran": 0, "renamed_malicious_ran": 0,
                         "not_rescanned": 0, "letters_quarantined": 0}
    want: list[tuple[str, str]] = []          # (path, sha256) the agent must scan

    def first_run(argv: list[str], marker: str = "") -> None:
        outcome, out = _exec(argv)
        ok = outcome == "ran" and (not marker or marker in out)
        f["allowed_ran" if ok else "allowed_refused"] += 1

    def then_refused(key: str, argv: list[str], marker: str = "") -> None:
        outcome, out = _exec(argv)
        f[key] += outcome == "ran" and (not marker or marker in out)

    with _agent(base, [sha["elf_a"], sha["sh_a"]], [f"{tools}/*"]) as a:
        files: list[dict[str, Path]] = []
        for i in range(n):
            p = {k: watched / f"{i}-{k}" for k in ("in-place", "rename-over", "recreated",
                                                     "mapped")}
            p["letter"] = watched / f"{i}-letter.pdf"
            p["script"] = watched / f"{i}-setup.sh"
            p["disguise"] = tools / f"{i}-invoice.pdf"     # a program: malicious
            for k in ("in-place", "rename-over", "recreated", "mapped"):
                _write(p[k], c["elf_a"])
            _write(p["letter"], c["pdf_a"], 0o644)
            _write(p["script"], c["sh_a"], 0o644)
            _write(p["disguise"], c["elf_b"])
            os.link(p["disguise"], keep / f"{i}-invoice.pdf")   # the vault refuses it
            # second links outside the folder: the vault refuses to move these after a
            # refused launch, so the agent's rescan of the new content can be seen
            os.link(p["in-place"], keep / f"{i}-in-place")
            files.append(p)
        kinds = {"letter": "pdf_a", "script": "sh_a", "disguise": "elf_b"}
        first = {(str(p[k]), sha[kinds.get(k, "elf_a")]) for p in files for k in p}
        if not wait_until(lambda: first <= _scanned(a.records()), SCAN_WAIT_S, 0.2):
            return {**f, "failures": 1, "error": "the agent did not scan the new files"}
        for i, p in enumerate(files):
            # in place, same size, mtime put back: only the ctime tells
            first_run([str(p["in-place"])])
            _rewrite_in_place(p["in-place"], c["elf_b"])
            then_refused("in_place_ran", [str(p["in-place"])])
            want.append((str(p["in-place"]), sha["elf_b"]))
            # a document rewritten into a program named .pdf: rescanned and quarantined
            _rewrite_in_place(p["letter"], c["pe_b"])
            want.append((str(p["letter"]), sha["pe_b"]))
            # rename-over: a new inode, made outside, with the old times
            first_run([str(p["rename-over"])])
            st = os.stat(p["rename-over"])
            new = stage / f"{i}-rename-over"
            _write(new, c["elf_b"])
            os.link(new, keep / f"{i}-rename-over")
            os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.rename(new, p["rename-over"])
            then_refused("rename_over_ran", [str(p["rename-over"])])
            want.append((str(p["rename-over"]), sha["elf_b"]))
            # removed and made again: the file system tends to hand out the same inode
            first_run([str(p["recreated"])])
            st = os.stat(p["recreated"])
            os.unlink(p["recreated"])
            _write(p["recreated"], c["elf_b"])
            os.link(p["recreated"], keep / f"{i}-recreated")
            os.utime(p["recreated"], ns=(st.st_atime_ns, st.st_mtime_ns))
            f["inode_reused"] += os.stat(p["recreated"]).st_ino == st.st_ino
            then_refused("recreated_ran", [str(p["recreated"])])
            want.append((str(p["recreated"]), sha["elf_b"]))
            # a script rewritten through a mapping held since before it was allowed
            with _dirty_mapping(p["script"], c["sh_a"]) as m:
                first_run(["sh", str(p["script"])], "A-RAN")
                before = os.stat(p["script"])
                m[:] = c["sh_b"]
                f["mapping_silent"] += _same_stamps(before, os.stat(p["script"]))
            then_refused("script_mapping_ran", ["sh", str(p["script"])], "B-RAN")
            # a program: its launch fails (ETXTBSY) while the mapping is there, but it was
            # asked about and allowed first; then rewritten through the mapping
            with _dirty_mapping(p["mapped"], c["elf_a"]) as m:
                outcome, _ = _exec([str(p["mapped"])])
                f["exec_busy"] += outcome == "busy"
                before = os.stat(p["mapped"])
                m[:] = c["elf_b"]
                f["mapping_silent"] += _same_stamps(before, os.stat(p["mapped"]))
            then_refused("exec_mapping_ran", [str(p["mapped"])])
            # judged malicious, renamed (a new ctime) where a path entry allows programs
            renamed = tools / f"{i}-invoice"
            os.rename(p["disguise"], renamed)
            then_refused("renamed_malicious_ran", [str(renamed)])
        wanted = set(want)
        wait_until(lambda: wanted <= _scanned(a.records()), SCAN_WAIT_S, 0.2)
        records = a.records()
        f["not_rescanned"] = len(wanted - _scanned(records))
        f["letters_quarantined"] = sum(
            1 for r in records if r.get("event", {}).get("action") == "quarantine"
            and r["event"].get("outcome") == "success"
            and r.get("file", {}).get("hash", {}).get("sha256") == sha["pe_b"])
    f["failures"] = (f["allowed_refused"] + f["in_place_ran"] + f["rename_over_ran"]
                     + f["recreated_ran"] + f["script_mapping_ran"] + f["exec_mapping_ran"]
                     + f["renamed_malicious_ran"]
                     + f["not_rescanned"] + (n - f["letters_quarantined"]))
    return f


@needs_fanotify
def test_a_file_changed_after_it_was_allowed_is_judged_again(tmp_path):
    figures = run_rewritten(3, tmp_path)
    print(figures)
    check(figures)


# --- case 8 -------------------------------------------------------------------------------

# A writer process: rewrites *path* with its two contents in turn until *stop* exists,
# in chunks with a pause after each. Modes: in-place (open for writing, no truncation),
# truncate (O_TRUNC first: the size changes as it goes), held (one descriptor kept open
# the whole time). Prints how many rewrites it made.
_WRITER = r"""
import os, sys, time
path, a_path, b_path, mode, chunks, pause_s, gap_s, stop = sys.argv[1:9]
chunks, pause_s, gap_s = int(chunks), float(pause_s), float(gap_s)
contents = [open(a_path, "rb").read(), open(b_path, "rb").read()]
size = len(contents[0])
step = -(-size // chunks)
held = os.open(path, os.O_RDWR) if mode == "held" else None
rewrites = 0
deadline = time.monotonic() + 900
while not os.path.exists(stop) and time.monotonic() < deadline:
    data = contents[(rewrites + 1) % 2]
    fd = held if held is not None else os.open(
        path, os.O_WRONLY | (os.O_TRUNC if mode == "truncate" else 0))
    for off in range(0, size, step):
        os.pwrite(fd, data[off:off + step], off)
        time.sleep(pause_s)
    if held is None:
        os.close(fd)
    rewrites += 1
    time.sleep(gap_s)
print(rewrites)
"""

WRITER_MODES = ("in-place", "truncate", "held")


def _scan_contents() -> tuple[bytes, bytes]:
    """A PDF and a PE of the same size: under the name statement.pdf, clean and malicious."""
    pe = (EXE / "pe" / "t64.exe").read_bytes()
    pdf = pdf_with()
    pdf = pdf.replace(b"%PDF-1.4\n", b"%PDF-1.4\n%" + b"x" * (len(pe) - len(pdf) - 2) + b"\n")
    assert len(pdf) == len(pe)
    return pdf, pe


def _race(scanner: Scanner, work: Path, mode: str, scans: int,
          levels: dict[str, str]) -> dict[str, int]:
    """*scans* scans of a file a writer process rewrites meanwhile, each classified."""
    work.mkdir(parents=True, exist_ok=True)
    pdf, pe = _scan_contents()
    a, b = work / "a.bin", work / "b.bin"
    a.write_bytes(pdf)
    b.write_bytes(pe)
    target, stop = work / "statement.pdf", work / "stop"
    target.write_bytes(pdf)
    out = {"verdicts": 0, "whole": 0, "wrong": 0, "no_verdict": 0, "other_errors": 0,
           "quiet_refused": 0, "rewrites": 0}
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(target), str(a), str(b),
                               mode, "4", "0.0005", "0.002", str(stop)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.05)
        for _ in range(scans):
            v = scanner.scan_file(target)
            if v.error:
                out["no_verdict" if "changed while" in v.error else "other_errors"] += 1
                continue
            out["verdicts"] += 1
            right = levels.get(v.sha256)
            if right is not None and v.level.value == right:
                out["whole"] += 1
            else:
                out["wrong"] += 1          # a verdict for content that was never whole
        stop.touch()
        stdout, _ = writer.communicate(timeout=60)
        out["rewrites"] = int(stdout.strip() or 0)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(10)
    # the writer is gone: a quiet file gets its verdict
    v = scanner.scan_file(target)
    out["quiet_refused"] = int(bool(v.error) or v.sha256 not in levels)
    return out


@case("8", "a file changing while it is scanned (writer processes)", fast=300, full=6000,
      unit="scans")
def run_changing(n: int, workdir: Path) -> dict:
    scanner = Scanner(load_rules())
    pdf, pe = _scan_contents()
    levels: dict[str, str] = {}
    for name, data in (("quiet.pdf", pdf), ("quiet-pe.pdf", pe)):
        p = workdir / name
        p.write_bytes(data)
        levels[_sha256(data)] = scanner.scan_file(p).level.value
    assert sorted(levels.values()) == ["clean", "malicious"], levels
    f: dict[str, Any] = {"scans": 0}
    totals = {"verdicts": 0, "whole": 0, "wrong": 0, "no_verdict": 0, "other_errors": 0,
              "quiet_refused": 0}
    for mode in WRITER_MODES:
        r = _race(scanner, workdir / mode, mode, max(1, n // len(WRITER_MODES)), levels)
        f["scans"] += max(1, n // len(WRITER_MODES))
        for k in totals:
            totals[k] += r[k]
        f[f"{mode}_verdicts"] = r["verdicts"]
        f[f"{mode}_wrong"] = r["wrong"]
        f[f"{mode}_rewrites"] = r["rewrites"]
    f.update(totals)
    f["wrong_pct"] = round(100 * totals["wrong"] / max(1, totals["verdicts"]), 1)
    # Where no lease can be taken (not the owner and no CAP_LEASE, a file system without
    # leases) only the stat comparison is left: measured, not counted, since it cannot
    # see a read that fell between two of a writer's chunks.
    take = scanner_module.take_read_lease
    scanner_module.take_read_lease = lambda fd: scanner_module.LEASE_UNAVAILABLE
    try:
        r = _race(scanner, workdir / "no-lease", "in-place", max(1, n // 6), levels)
    finally:
        scanner_module.take_read_lease = take
    f["no_lease_verdicts"] = r["verdicts"]
    f["no_lease_wrong"] = r["wrong"]
    f["failures"] = totals["wrong"] + totals["quiet_refused"] + totals["other_errors"]
    return f


def test_no_verdict_for_content_that_changed_under_the_read(tmp_path):
    figures = run_changing(300, tmp_path)
    print(figures)
    check(figures)
