"""Parsers in worker processes under a budget (guard/sandbox.py): real workers, real
rlimits, real signals. A file that blows the CPU, memory or wall-time budget is
"limit-exceeded" and never clean; a worker that dies (a parser crash, here a real SIGSEGV
sent to the real worker) costs that one file a "malformed" reason, and the next file gets
a new worker; the agent itself never goes down with it."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import threading
import time
import zlib
from pathlib import Path

import psutil
import pytest

from daemon_support import Agent, wait_until, write_config
from guard.sandbox import Budget, IsolatedScanner, WorkerFailed, _FactsUnpickler, _check_facts
from guard.scanner import ScanOptions, Scanner, load_rules
from guard.verdict import Code, Level

CORPUS = Path(__file__).resolve().parent / "corpus"

# Rules that take as long as they are allowed to: on a file of "B"s the inner loop runs
# filesize times for every byte (about 10**10 steps for 100 KB).
SLOW_RULES = r"""
rule slow_quadratic {
    condition: for any i in (0..filesize - 1): (
        for any j in (0..filesize - 1): (uint8(i) == 0x42 and uint8(j) == 0x43))
}
"""
NO_YARA_LIMIT = ScanOptions(yara_timeout_s=3600.0)


@pytest.fixture(scope="module")
def slow_rules(tmp_path_factory):
    d = tmp_path_factory.mktemp("slow-rules")
    (d / "slow.yar").write_text(SLOW_RULES)
    return load_rules([d], bundled=False)


@pytest.fixture
def slow_file(tmp_path):
    p = tmp_path / "Notes.txt"
    p.write_bytes(b"B" * 100_000)
    return p


@pytest.fixture
def isolated():
    made: list[IsolatedScanner] = []

    def make(rules=None, options=None, **budget) -> IsolatedScanner:
        s = IsolatedScanner(rules if rules is not None else load_rules(), options,
                            Budget(**budget))
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


def _codes(v) -> set[Code]:
    return {r.code for r in v.reasons}


def _corpus_files(limit: int = 120) -> list[Path]:
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name != "MANIFEST.tsv")
    step = max(1, len(files) // limit)
    return files[::step][:limit]


def test_the_same_verdicts_as_scanning_in_process(isolated, scanner):
    iso = isolated()
    files = _corpus_files()
    assert len(files) > 50
    for p in files:
        a, b = scanner.scan_file(p), iso.scan_file(p)
        assert (b.level, b.rules, b.sha256, b.type) == (a.level, a.rules, a.sha256, a.type), p
        assert [r.code for r in b.reasons] == [r.code for r in a.reasons], p
    assert iso.started == 1 and iso.failures == 0     # one worker did them all
    [pid] = iso.worker_pids()
    assert pid != os.getpid() and psutil.Process(pid).ppid() == os.getpid()


def test_the_worker_drops_root_when_the_install_lets_it(isolated):
    iso = isolated()
    iso.scan_file(_corpus_files(1)[0])
    [pid] = iso.worker_pids()
    proc = psutil.Process(pid)
    if os.geteuid() != 0:
        pytest.skip("only root has something to drop")
    from guard.sandbox import _install_readable_by_all
    if _install_readable_by_all():
        assert proc.uids().effective != 0
    else:   # a private install (pyenv under /root): lazy imports would fail as nobody
        assert proc.uids().effective == 0
    assert proc.rlimit(psutil.RLIMIT_CORE) == (0, 0)


def test_cpu_budget_stops_the_parser_and_the_file_is_never_clean(isolated, slow_rules,
                                                                 slow_file):
    iso = isolated(slow_rules, NO_YARA_LIMIT, cpu_s=1.0, wall_s=120.0)
    started = time.monotonic()
    v = iso.scan_file(slow_file)
    assert time.monotonic() - started < 60
    assert v.level is not Level.CLEAN
    assert Code.LIMIT_EXCEEDED in _codes(v)
    assert any("CPU time" in r.detail for r in v.reasons), v.reasons
    assert iso.failures == 1 and iso.worker_pids() == []     # the worker is gone


def test_wall_budget_stops_the_parser(isolated, slow_rules, slow_file):
    iso = isolated(slow_rules, NO_YARA_LIMIT, cpu_s=600.0, wall_s=1.5)
    started = time.monotonic()
    v = iso.scan_file(slow_file)
    assert 1.4 < time.monotonic() - started < 60
    assert v.level is not Level.CLEAN and Code.LIMIT_EXCEEDED in _codes(v)
    assert any("wall time" in r.detail for r in v.reasons), v.reasons


def test_memory_budget(isolated, tmp_path):
    """A PDF whose attachment inflates to 70 MB: the PDF reader gets MemoryError under a
    32 MB budget, and the worker is replaced."""
    body = zlib.compress(bytes(70 << 20), 9)
    pdf = (b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R /Names << /EmbeddedFiles << "
           b"/Names [(a.exe) 4 0 R] >> >> >> endobj\n2 0 obj << /Type /Pages /Kids [3 0 R] "
           b"/Count 1 >> endobj\n3 0 obj << /Type /Page /Parent 2 0 R /MediaBox [0 0 9 9] >> "
           b"endobj\n4 0 obj << /Type /Filespec /F (a.exe) /EF << /F 5 0 R >> >> endobj\n"
           + b"5 0 obj << /Type /EmbeddedFile /Filter /FlateDecode /Length %d >> stream\n"
           % len(body) + body + b"\nendstream endobj\ntrailer << /Root 1 0 R >>\n"
           b"startxref\n0\n%%EOF\n")
    p = tmp_path / "Statement.pdf"
    p.write_bytes(pdf)
    roomy = isolated().scan_file(p)
    assert not any("memory" in r.detail for r in roomy.reasons), roomy.reasons
    iso = isolated(memory_mb=32.0)
    v = iso.scan_file(p)
    assert v.level is not Level.CLEAN
    assert Code.LIMIT_EXCEEDED in _codes(v)
    assert any("memory" in r.detail for r in v.reasons), v.reasons
    ok = iso.scan_file(CORPUS / "README.md")                 # the next file: fine
    assert ok.level is Level.CLEAN and iso.started == 2


def _busy_worker(iso: IsolatedScanner, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = iso.worker_pids(busy=True)
        if pids:
            return pids[0]
        time.sleep(0.02)
    raise AssertionError("no worker got busy")


def test_a_parser_crash_costs_one_verdict_not_the_scanner(isolated, slow_rules, slow_file,
                                                          tmp_path):
    iso = isolated(slow_rules, NO_YARA_LIMIT, cpu_s=600.0, wall_s=600.0)
    out: list = []
    t = threading.Thread(target=lambda: out.append(iso.scan_file(slow_file)))
    t.start()
    pid = _busy_worker(iso)
    time.sleep(0.3)                                 # inside libyara by now
    os.kill(pid, signal.SIGSEGV)                    # what a parser's memory bug does
    t.join(30)
    assert not t.is_alive()
    [v] = out
    assert v.level is not Level.CLEAN and Code.MALFORMED in _codes(v)
    assert any("SIGSEGV" in r.detail for r in v.reasons), v.reasons
    assert v.sha256                                 # hashed in the agent all the same
    clean = tmp_path / "fine.txt"
    clean.write_text("nothing to see")
    assert iso.scan_file(clean).level is Level.CLEAN
    assert iso.started == 2 and not psutil.pid_exists(pid)


def test_idle_workers_exit_and_come_back(isolated, tmp_path):
    iso = isolated(idle_s=0.0)
    f = tmp_path / "a.txt"
    f.write_text("x")
    iso.scan_file(f)
    [pid] = iso.worker_pids()
    assert iso.reap_idle() == 1
    assert iso.worker_pids() == [] and not psutil.pid_exists(pid)
    assert iso.scan_file(f).level is Level.CLEAN and iso.started == 2


def test_parallel_scans_take_a_worker_each(isolated):
    iso = isolated()
    files = _corpus_files(40)
    results: dict[int, list] = {0: [], 1: [], 2: []}

    def run(k):
        results[k] = [iso.scan_file(p) for p in files[k::3]]
    threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sum(len(r) for r in results.values()) == len(files)
    assert all(not v.error for r in results.values() for v in r)
    assert 1 <= iso.started <= 3 and iso.failures == 0


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/guard-sandbox-pwned",))


@pytest.mark.parametrize("answer", [
    ("ok", _Evil(), False),
    ("ok", {"type": _Evil()}, False),
    ("raised", "text", _Evil()),
], ids=["reduce-os-system", "nested", "in-an-error"])
def test_an_answer_that_names_anything_but_facts_is_refused(answer, tmp_path):
    raw = pickle.dumps(answer)
    with pytest.raises(pickle.UnpicklingError):
        _FactsUnpickler(io.BytesIO(raw)).load()
    assert not Path("/tmp/guard-sandbox-pwned").exists()


def test_enum_members_come_back_but_getattr_gives_nothing_else():
    """Some Pythons pickle an enum member as getattr(cls, name): that much is allowed."""
    from guard.verdict import Family, FileType

    def raw(cls, name) -> bytes:       # PROTO 4, GLOBAL builtins getattr, (cls, name), REDUCE
        return (b"\x80\x04cbuiltins\ngetattr\n" + b"c" + cls.__module__.encode() + b"\n"
                + cls.__name__.encode() + b"\n" + b"X" + len(name).to_bytes(4, "little")
                + name.encode() + b"\x86R.")
    assert _FactsUnpickler(io.BytesIO(raw(Family, "EXECUTABLE"))).load() is Family.EXECUTABLE
    for cls, name in ((FileType, "__init__"), (Family, "__class__"), (Family, "nope")):
        with pytest.raises(pickle.UnpicklingError):
            _FactsUnpickler(io.BytesIO(raw(cls, name))).load()


def test_facts_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError):
        _check_facts({"type": None})
    good = {k: None for k in ("type", "pe", "shortcut", "macros", "pdf", "container")}
    good.update(rule_hits=[], member_hits=[], malformed=[], limits_exceeded=[])
    assert _check_facts(dict(good)) == good
    with pytest.raises(ValueError):
        _check_facts({**good, "malformed": [1]})
    with pytest.raises(ValueError):
        _check_facts({**good, "pe": "not facts"})


def test_a_worker_that_cannot_start_falls_back_to_scanning_here(isolated, tmp_path,
                                                                monkeypatch):
    """No worker (an interpreter that cannot run): the scan still happens, in process,
    and the scanner says why."""
    import guard.sandbox as sandbox
    monkeypatch.setattr(sandbox.sys, "executable", str(tmp_path / "no-such-python"))
    iso = isolated()
    f = tmp_path / "Invoice.pdf"
    f.write_bytes((CORPUS / "executables").glob("**/*.exe").__next__().read_bytes()
                  if any((CORPUS / "executables").glob("**/*.exe")) else b"MZ" + bytes(200))
    v = iso.scan_file(f)
    assert v.level is not Level.CLEAN
    assert "could not be started" in iso.unavailable


def test_the_agent_survives_a_parser_crash_and_a_blown_budget(tmp_path, slow_rules):
    """The real agent: one file stops its worker by the wall-time budget, another's
    worker gets SIGSEGV mid-scan; both files get a not-clean record, the agent stays up and
    the next file gets its verdict from a new worker."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "slow.yar").write_text(SLOW_RULES)
    cfg = write_config(tmp_path, mode="monitor", extra=f'''
rules = ["{rules}"]
yara_timeout_s = 3600
parser_wall_s = 3
parser_cpu_s = 600
log_clean = true
''')
    agent = Agent(tmp_path, cfg).start()

    def record_of(name: str) -> dict:
        def find():
            return next((r for r in agent.records()
                         if r.get("file", {}).get("name") == name), None)
        rec = wait_until(find, 90, 0.1)
        assert rec is not None, f"no record for {name}"
        return rec
    try:
        downloads = tmp_path / "Downloads"
        (downloads / "Slow-1.txt").write_bytes(b"B" * 100_000)
        rec = record_of("Slow-1.txt")
        assert "limit-exceeded" in json.dumps(rec)

        (downloads / "Slow-2.txt").write_bytes(b"B" * 100_000)
        me = psutil.Process(agent.proc.pid)
        deadline, victim = time.monotonic() + 30, None
        while victim is None and time.monotonic() < deadline:
            for child in me.children():
                if "guard.sandbox" in " ".join(child.cmdline()) and child.cpu_times().user > 0.2:
                    victim = child
            time.sleep(0.05)
        assert victim is not None, "the agent's parser worker was not seen at work"
        victim.send_signal(signal.SIGSEGV)
        rec = record_of("Slow-2.txt")
        assert "SIGSEGV" in json.dumps(rec)
        assert agent.proc.poll() is None

        (downloads / "fine.txt").write_text("hello")
        record_of("fine.txt")
        assert agent.proc.poll() is None
        assert wait_until(lambda: (agent.status() or {}).get("parsers", {}).get("failures", 0)
                          >= 2, 30), agent.status()
    finally:
        agent.stop()


def test_prestart_readies_a_worker_before_the_first_file(isolated, tmp_path):
    from daemon_support import wait_until
    iso = isolated()
    iso.prestart()
    assert wait_until(lambda: iso.worker_pids(), 60)
    [pid] = iso.worker_pids()
    f = tmp_path / "a.txt"
    f.write_text("x")
    iso.scan_file(f)
    assert iso.worker_pids() == [pid] and iso.started == 1     # that worker took the file
