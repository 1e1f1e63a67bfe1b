"""The real corpus: zero false positives on benign files, honest verdicts on executables."""

from __future__ import annotations

import pytest

from builders import BENIGN, EXE
from guard.verdict import Level

BENIGN_FILES = sorted(p for p in BENIGN.rglob("*") if p.is_file())
EXE_FILES = sorted(p for p in EXE.rglob("*") if p.is_file())

# Under its own name, each executable keeps its honest verdict: a program, script or
# shortcut is suspicious, a macro document is suspicious, a document with a program
# embedded in it is malicious.
HONEST = {
    "pe": (Level.SUSPICIOUS, "executable"),
    "elf": (Level.SUSPICIOUS, "executable"),
    "macho": (Level.SUSPICIOUS, "executable"),
    "lnk": (Level.SUSPICIOUS, "executable"),
    "script": (Level.SUSPICIOUS, "executable"),
    "other": (Level.SUSPICIOUS, "executable"),
    "office-macro": (Level.SUSPICIOUS, "macro-document"),
    "office-embedded": (Level.MALICIOUS, "embedded-executable"),
}
FAMILY = {"pe": "executable", "elf": "executable", "macho": "executable", "lnk": "shortcut",
          "script": "script", "other": "executable", "office-macro": "document",
          "office-embedded": "document"}


def test_corpus_is_present():
    assert len(BENIGN_FILES) >= 60 and len(EXE_FILES) >= 20


@pytest.mark.parametrize("path", BENIGN_FILES, ids=lambda p: str(p.relative_to(BENIGN)))
def test_benign_file_is_clean(scanner, path):
    v = scanner.scan_file(path)
    assert v.error is None
    assert v.level is Level.CLEAN, [r.to_dict() for r in v.reasons]
    assert v.rules == ()
    assert v.type.family.value not in ("executable", "script", "shortcut")


@pytest.mark.parametrize("path", EXE_FILES, ids=lambda p: str(p.relative_to(EXE)))
def test_executable_keeps_honest_verdict(scanner, path):
    group = path.relative_to(EXE).parts[0]
    level, code = HONEST[group]
    v = scanner.scan_file(path)
    assert v.error is None
    assert v.level is level, [r.to_dict() for r in v.reasons]
    assert code in v.codes
    assert v.type.family.value == FAMILY[group]
    assert v.summary.startswith(f"'{path.name}'")


def test_sha256_and_size_match_manifest(scanner):
    rows = (EXE.parent / "MANIFEST.tsv").read_text().splitlines()[1:]
    for row in rows:
        rel, sha, size = row.split("\t")[:3]
        v = scanner.scan_file(EXE.parent / rel)
        assert (v.sha256, v.size) == (sha, int(size)), rel


def test_pe_details_for_the_soc(scanner):
    dll = scanner.scan_file(EXE / "pe" / "_psutil_windows.pyd").details["pe"]
    assert dll["kind"] == "dll" and dll["machine"] == "amd64"
    gui = scanner.scan_file(EXE / "pe" / "w64.exe").details["pe"]
    assert gui["kind"] == "exe" and gui["subsystem"] == "gui"
    arm = scanner.scan_file(EXE / "pe" / "cli-arm64.exe").details["pe"]
    assert arm["machine"] == "arm64"
    for pe in (dll, gui, arm):
        assert set(pe) >= {"signed", "overlay_bytes", "high_entropy_sections", "dotnet"}
        assert pe["dotnet"] is False


def test_java_class_is_not_mistaken_for_macho(scanner):
    v = scanner.scan_file(EXE / "other" / "java.class")
    assert v.type.kind == "java-class"
