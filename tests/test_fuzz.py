"""Property tests: random, truncated and bit-flipped inputs never crash or hang a scan.

A fast subset runs in CI; bench/ holds the long fuzz runs.
"""

from __future__ import annotations

import os
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import builders as b
from guard.verdict import Level, Verdict

REAL_FILES = sorted(p for p in b.CORPUS.rglob("*") if p.is_file() and p.suffix != ".tsv")
MAGICS = [b"MZ", b"\x7fELF", b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe", b"PK\x03\x04",
          b"7z\xbc\xaf\x27\x1c", b"Rar!\x1a\x07\x01\x00", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
          b"%PDF-1.7\n", bytes.fromhex("4c0000000114020000000000c000000000000046"),
          b"MSCF\0\0\0\0", b"\x1f\x8b\x08", b"BZh9", b"\xfd7zXZ\x00", b"{\\rtf1", b"#!/bin/sh\n",
          b"[InternetShortcut]\nURL=", b"FasdUAS"]
NAMES = st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                       blacklist_characters="/\0"),
                min_size=1, max_size=60).filter(lambda n: n not in (".", ".."))
SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
MAX_SCAN_S = 20.0      # generous: a hang is what we look for, not speed


def _scan_bytes(scanner, tmp_path, name: str, data: bytes) -> Verdict:
    path = tmp_path / "f"
    path.mkdir(exist_ok=True)
    try:
        target = path / name
        target.write_bytes(data)
    except OSError:                 # names the file system refuses (too long)
        target = path / "fallback.bin"
        target.write_bytes(data)
    started = time.monotonic()
    v = scanner.scan_file(target)
    assert time.monotonic() - started < MAX_SCAN_S
    assert isinstance(v, Verdict) and v.level in Level
    assert v.error is None, v.error          # a readable file always gets a verdict
    assert all(r.message for r in v.reasons)
    v.to_dict()
    target.unlink()
    return v


@SETTINGS
@given(name=NAMES, data=st.binary(max_size=4096))
def test_random_bytes_random_names(scanner, tmp_path, name, data):
    _scan_bytes(scanner, tmp_path, name, data)


@SETTINGS
@given(magic=st.sampled_from(MAGICS), tail=st.binary(max_size=8192),
       ext=st.sampled_from(["pdf", "exe", "zip", "lnk", "docx", "iso", "7z", ""]))
def test_format_headers_with_random_bodies(scanner, tmp_path, magic, tail, ext):
    _scan_bytes(scanner, tmp_path, f"sample.{ext}" if ext else "sample", magic + tail)


@SETTINGS
@given(index=st.integers(0, len(REAL_FILES) - 1), cut=st.floats(0, 1))
def test_truncated_real_files(scanner, tmp_path, index, cut):
    src = REAL_FILES[index]
    data = src.read_bytes()
    _scan_bytes(scanner, tmp_path, src.name, data[: int(len(data) * cut)])


@SETTINGS
@given(index=st.integers(0, len(REAL_FILES) - 1),
       flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 7)), min_size=1, max_size=16))
def test_bit_flipped_real_files(scanner, tmp_path, index, flips):
    src = REAL_FILES[index]
    data = bytearray(src.read_bytes())
    if not data:
        return
    for where, bit in flips:
        data[min(len(data) - 1, int(where * len(data)))] ^= 1 << bit
    _scan_bytes(scanner, tmp_path, src.name, bytes(data))


def test_every_real_file_truncated_at_every_power_of_two(scanner, tmp_path):
    """Deterministic sweep: each corpus file cut at 1, 2, 4, ... bytes."""
    for src in REAL_FILES:
        data = src.read_bytes()
        cut = 1
        while cut < len(data):
            _scan_bytes(scanner, tmp_path, src.name, data[:cut])
            cut *= 2


def test_disguised_containers_bit_flipped(scanner, tmp_path):
    rnd = __import__("random").Random(1234)
    seeds = [b.zip_of({"Contract.pdf.exe": b.pe32()}), b.iso_of({"a.lnk": b.lnk()}),
             b.seven_zip_of({"x.exe": b.pe32()}), b.pdf_with_attachment("a.exe", b.pe32())]
    for seed in seeds:
        for _ in range(40):
            data = bytearray(seed)
            for _ in range(rnd.randint(1, 8)):
                data[rnd.randrange(len(data))] ^= 1 << rnd.randrange(8)
            _scan_bytes(scanner, tmp_path, "x.bin", bytes(data))
    assert os.listdir(tmp_path / "f") == []
