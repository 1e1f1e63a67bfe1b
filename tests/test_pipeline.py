"""The file pipeline in one process: real files in a real folder, the real scanner with
the bundled rules, a real vault and audit log, notifications to a file. No agent process:
the pipeline is built from its parts the way the daemon builds it, and driven directly."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from builders import pe32
from guard.actions.notify import Notifier
from guard.actions.quarantine import Vault
from guard.agent.health import AuditSink, Counters, Problems
from guard.agent.pipeline import FilePipeline, PipelineParts
from guard.agent.verdicts import VerdictMemory
from guard.audit.writer import AuditLog
from guard.config import Config, WatchFolder
from guard.events import FileEvent
from guard.verdict import FileIdentity, Level, Mode, Problem, Trigger


class World:
    def __init__(self, tmp: Path, scanner, mode: Mode = Mode.ENFORCE, meeting: bool = False):
        self.folder = tmp / "Downloads"
        self.folder.mkdir()
        self.watch = WatchFolder(self.folder, "browser")
        self.config = Config(quarantine_dir=tmp / "vault", log_file=tmp / "audit.jsonl",
                             state_dir=tmp / "state", watch=(self.watch,), workers=1)
        self.counters = Counters()
        self.problems = Problems(self.counters)
        self.log = AuditLog(tmp / "audit.jsonl")
        self.audit = AuditSink(self.log, self.problems)
        self.problems.log = self.audit
        self.notes = tmp / "notes.jsonl"
        self.notifier = Notifier(f"file:{self.notes}")
        self.guarded: list[str] = []
        self.mode = mode
        self.meeting = meeting
        self.verdicts = VerdictMemory()
        self.pipeline = FilePipeline(self.config, PipelineParts(
            scanner=scanner, vault=Vault(tmp / "vault"), audit=self.audit,
            problems=self.problems, counters=self.counters, mode=lambda: self.mode,
            meeting=lambda: self.meeting, notifier=self.notifier, verdicts=self.verdicts,
            keep_guarded=self.guarded.append))

    def drop(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        path.write_bytes(data)
        return path

    def handle(self, path: Path, trigger: Trigger = Trigger.CLOSED) -> None:
        self.pipeline.handle(FileEvent(path, self.watch, trigger))

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.log.path.read_text().splitlines()]

    def notes_written(self, n: int) -> list[dict]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            lines = self.notes.read_text().splitlines() if self.notes.exists() else []
            if len(lines) >= n:
                return [json.loads(x) for x in lines]
            time.sleep(0.02)
        raise AssertionError(f"{n} notifications expected, file has fewer")

    def close(self) -> None:
        self.notifier.close(2.0)
        self.log.close()


@pytest.fixture
def world(tmp_path, scanner):
    worlds = []

    def make(**kw) -> World:
        w = World(tmp_path / str(len(worlds)), scanner, **kw) if worlds else \
            World(tmp_path, scanner, **kw)
        worlds.append(w)
        return w
    yield make
    for w in worlds:
        w.close()


def test_a_disguised_program_is_quarantined_recorded_and_told(world):
    w = world()
    path = w.drop("Signed Contract.pdf", pe32())
    identity = FileIdentity.of(os.stat(path))
    w.handle(path)
    assert not path.exists()
    (q,) = [r for r in w.records() if r["event"]["action"] == "quarantine"]
    assert q["guard"]["verdict"] == "malicious" and "type-mismatch" in q["guard"]["codes"]
    assert q["guard"]["trigger"] == "closed" and q["guard"]["source"] == "browser"
    qid = q["guard"]["quarantine_id"]
    (note,) = w.notes_written(1)
    assert note["quarantine_id"] == qid and "Signed Contract.pdf" in note["body"]
    assert (w.counters.scanned, w.counters.malicious, w.counters.quarantined) == (1, 1, 1)
    # launch control can ask for the verdict of this content by file and hash
    known = w.verdicts.lookup(identity, q["file"]["hash"]["sha256"])
    assert known is not None and known.level is Level.MALICIOUS
    assert w.verdicts.lookup(identity, "0" * 64) is None, "other content, no verdict"


def test_an_unchanged_file_is_not_scanned_again_and_a_changed_one_is(world):
    w = world()
    path = w.drop("notes.txt", b"meeting notes\n")
    w.handle(path)
    w.handle(path)
    assert (w.counters.scanned, w.counters.skipped_unchanged) == (1, 1)
    path.write_bytes(b"meeting notes, edited\n")
    w.handle(path)
    assert w.counters.scanned == 2
    assert not any(r["event"]["action"] == "file-scanned" for r in w.records()), \
        "clean files get no record unless log_clean is on"


def test_monitor_mode_records_would_quarantine_and_moves_nothing(world):
    w = world(mode=Mode.MONITOR)
    path = w.drop("invoice.pdf", pe32())
    w.handle(path)
    assert path.exists()
    (r,) = [r for r in w.records() if r["guard"].get("verdict") == "malicious"]
    assert r["event"]["action"] == "would-quarantine"
    assert w.guarded == [str(path)], "a malicious file left in place stays under launch control"


def test_meeting_strict_policy_quarantines_an_honest_program(world):
    w = world(meeting=True)
    path = w.drop("setup.exe", pe32())
    w.handle(path)
    assert not path.exists()
    (q,) = [r for r in w.records() if r["event"]["action"] == "quarantine"]
    assert q["guard"]["verdict"] == "suspicious" and q["guard"]["meeting"] is True
    (note,) = w.notes_written(1)
    assert "separate channel" in note["body"]


def test_a_file_that_changes_while_it_is_scanned_is_queued_again(world, tmp_path):
    w = world()
    path = w.drop("report.pdf", pe32())
    # a writer that holds the file open: the scan refuses to read it (Failure.CHANGED)
    fd = os.open(path, os.O_WRONLY)
    try:
        w.handle(path)
    finally:
        os.close(fd)
    assert path.exists() and w.pipeline.depth == 1, "the file is queued for a rescan"
    again = w.pipeline.queue.get_nowait()
    assert again.trigger is Trigger.RESCAN and again.attempt == 1
    w.pipeline.handle(again)
    assert not path.exists(), "rescanned once nobody writes it, and quarantined"


def test_a_failure_in_one_file_is_counted_and_logged_once_and_the_workers_go_on(world):
    w = world()

    class Broken:
        def scan_file(self, path, follow=False):
            raise RuntimeError("parser exploded")
    w.pipeline.parts.scanner = Broken()
    w.pipeline.start()
    try:
        for _ in range(2):
            w.pipeline.offer(w.drop("a.pdf", b"%PDF-1.4\n"), w.watch, Trigger.CLOSED)
            deadline = time.monotonic() + 10
            while w.pipeline.depth and time.monotonic() < deadline:
                time.sleep(0.01)
        deadline = time.monotonic() + 10
        while w.problems.to_dict().get("scan", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert w.pipeline.alive
    finally:
        w.pipeline.stop(1.0)
    assert w.problems.to_dict()["scan"] == 2 and w.counters.errors == 2
    assert "parser exploded" in w.problems.last_error
    (error,) = [r for r in w.records() if r["event"]["action"] == "guard-error"]
    assert error["guard"]["kind"] == Problem.SCAN.value, "the same failure is logged once"
    assert "parser exploded" in error["message"]
