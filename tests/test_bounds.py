"""Bounds and bad input: a clear error or reason, no crash, nothing changed on disk."""

from __future__ import annotations

import io
import os
import socket
import struct
import zipfile

import pytest

import builders as b
from guard.identify.containers import Limits
from guard.scanner import ScanOptions, Scanner
from guard.verdict import Level


def _tree_state(root):
    """Every path below root with its size and mtime: to prove a scan changed nothing."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[p] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return out


def test_too_large_gets_hash_and_header_only(scanner, tmp_path):
    opts = ScanOptions(max_size_bytes=64 * 1024)
    path = tmp_path / "Contract.pdf"
    path.write_bytes(b.pe32() + os.urandom(200 * 1024))
    v = Scanner(scanner.rules, opts).scan_file(path)
    assert "too-large" in v.codes
    assert v.level is Level.MALICIOUS and "type-mismatch" in v.codes   # header still judged
    import hashlib
    assert v.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_large_benign_file_is_clean_with_too_large_note(scanner, tmp_path):
    path = tmp_path / "video.mp4"
    path.write_bytes(b.corpus_bytes("benign/mp4/mp4.mp4") + b"\0" * (300 * 1024))
    v = Scanner(scanner.rules, ScanOptions(max_size_bytes=128 * 1024)).scan_file(path)
    assert v.level is Level.CLEAN and "too-large" in v.codes


def _zip_ratio_bomb(size: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("zeros.txt", "w", force_zip64=True) as fh:
            block = b"\0" * (1 << 20)
            for _ in range(size >> 20):
                fh.write(block)
    return buf.getvalue()


def _overlap_bomb() -> bytes:
    """Two central-directory entries that share one local file (Fifield's trick)."""
    data = b.zip_of({"a.txt": b"A" * 1000})
    eocd_at = data.rindex(b"PK\x05\x06")
    cd_at, = struct.unpack_from("<I", data, eocd_at + 16)
    cd = data[cd_at:eocd_at]
    cd2 = cd.replace(b"a.txt", b"b.txt")
    eocd = bytearray(data[eocd_at:])
    struct.pack_into("<HHI", eocd, 8, 2, 2, len(cd) + len(cd2))
    return data[:cd_at] + cd + cd2 + bytes(eocd)


def _nested(depth: int) -> bytes:
    data = b"hello"
    for i in range(depth):
        data = b.zip_of({f"level{i}.zip" if i else "x.txt": data})
    return data


@pytest.mark.parametrize("make,why", [
    (lambda: _zip_ratio_bomb(300 << 20), "expan"),
    (_overlap_bomb, "overlapping"),
    (lambda: _nested(12), "nested"),
    (lambda: b.zip_of({f"f{i}.txt": b"" for i in range(10_050)},
                      zipfile.ZIP_STORED), "members"),
])
def test_archive_bombs_are_flagged_not_expanded(scanner, tmp_path, make, why):
    path = tmp_path / "bomb.zip"
    path.write_bytes(make())
    before = _tree_state(tmp_path)
    v = scanner.scan_file(path)
    assert "archive-bomb" in v.codes, v.codes
    assert v.level is not Level.CLEAN
    reason = next(r for r in v.reasons if r.code == "archive-bomb")
    assert why in reason.detail
    assert v.details["container"]["expanded_bytes"] <= Limits().max_expanded_bytes
    assert _tree_state(tmp_path) == before


def test_gzip_bomb_stops_at_the_budget(scanner, tmp_path):
    import gzip
    path = tmp_path / "logs.gz"
    comp = gzip.compress(b"\0" * (300 << 20), compresslevel=1)
    path.write_bytes(comp)
    v = Scanner(scanner.rules, ScanOptions(limits=Limits(max_member_bytes=8 << 20))
                ).scan_file(path)
    assert "archive-bomb" in v.codes
    assert v.details["container"]["expanded_bytes"] <= 8 << 20


def test_special_files_are_skipped_without_opening(scanner, tmp_path):
    fifo = tmp_path / "pipe.pdf"
    os.mkfifo(fifo)          # opening a FIFO for reading would block: the test would hang
    sock_path = tmp_path / "s.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    try:
        for p in (fifo, sock_path):
            v = scanner.scan_file(p)
            assert v.skipped and v.level is Level.CLEAN and v.error is None
            assert "not-regular-file" in v.codes
        dev = scanner.scan_file("/dev/null")
        assert dev.skipped
        found = dict(scanner.iter_targets([tmp_path]))
        assert all(found[str(p)] is not None and found[str(p)].skipped
                   for p in (fifo, sock_path))
    finally:
        sock.close()


def test_vanished_file_is_an_error_not_a_crash(scanner, tmp_path):
    v = scanner.scan_file(tmp_path / "gone.pdf")
    assert v.error and "no such file" in v.error
    assert "scan-failed" in v.codes


def test_symlink_out_of_the_root_is_not_followed(scanner, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.exe").write_bytes(b.pe32())
    root = tmp_path / "root"
    root.mkdir()
    (root / "inside.txt").write_text("hello")
    os.symlink(outside / "secret.exe", root / "link.pdf")
    os.symlink(root / "inside.txt", root / "alias.txt")
    os.symlink(root, root / "loop")
    found = dict(scanner.iter_targets([root]))
    assert found[str(root / "link.pdf")].skipped
    assert "symlink-skipped" in found[str(root / "link.pdf")].codes
    assert found[str(root / "alias.txt")] is None         # inside the root: scanned
    assert not any("loop/" in p for p in found)            # folder loops are not walked
    followed = Scanner(scanner.rules, ScanOptions(follow_symlinks=True))
    assert dict(followed.iter_targets([root]))[str(root / "link.pdf")] is None
    # scan_file with follow=False refuses a link (O_NOFOLLOW): an error, no verdict on target
    v = scanner.scan_file(root / "link.pdf", follow=False)
    assert v.level is not Level.MALICIOUS


@pytest.mark.parametrize("name,data", [
    ("broken.exe", b"MZ" + b"\0" * 0x3A + struct.pack("<I", 0x40) + b"PE\0\0" + b"\xff" * 8),
    ("broken.zip", b.zip_of({"a.txt": b"x" * 100})[:-30]),
    ("broken.lnk", bytes.fromhex("4c0000000114020000000000c000000000000046") + b"\xff" * 10),
    ("broken.7z", b"7z\xbc\xaf\x27\x1c" + b"\0" * 30),
    ("broken.iso", b"\0" * 0x8001 + b"CD001" + b"\xff" * 2000),
    ("broken.docx", b"PK\x03\x04" + b"\0" * 100),
    ("broken.pdf", b"%PDF-1.4\n/EmbeddedFile garbage\n"),
    ("truncated.pdf", b.corpus_bytes("benign/pdf/magika_test.pdf")[:4000]),
])
def test_malformed_files_get_a_reason_not_a_traceback(scanner, tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    v = scanner.scan_file(path)
    assert v.error is None
    assert v.level is not Level.CLEAN, v.codes
    assert "malformed" in v.codes, v.codes


def test_names_with_invalid_utf8_round_trip(scanner, tmp_path):
    raw = os.fsencode(str(tmp_path)) + b"/Contr\xffact\x1b[2J.pdf"
    with open(raw, "wb") as fh:
        fh.write(b.pe32())
    found = dict(scanner.iter_targets([tmp_path]))
    (path,) = found
    assert os.fsencode(path) == raw
    v = scanner.scan_file(path)
    assert v.level is Level.MALICIOUS
    assert "\x1b" not in v.summary and "\\xff" in v.summary


def test_large_file_hash_beside_the_scan_matches_hashlib(scanner, tmp_path):
    """From 1 MiB the hash runs on a helper thread while the file is inspected."""
    data = b.pe32() + os.urandom(3 * 1024 * 1024)
    path = tmp_path / "Contract.pdf"
    path.write_bytes(data)
    v = scanner.scan_file(path)
    import hashlib
    assert v.sha256 == hashlib.sha256(data).hexdigest() and v.size == len(data)
    assert v.level is Level.MALICIOUS


def test_background_sha256_equals_hashlib_for_any_chunking():
    import hashlib
    from guard.hashing import BackgroundSha256
    data = os.urandom(5 * 1024 * 1024 + 3)
    for cut in (4096, 1 << 20, len(data)):
        h = BackgroundSha256()
        for i in range(0, len(data), cut):
            h.feed(data[i:i + cut])
        assert h.hexdigest() == hashlib.sha256(data).hexdigest()
        assert h.hexdigest() == hashlib.sha256(data).hexdigest()     # idempotent
    assert BackgroundSha256().hexdigest() == hashlib.sha256(b"").hexdigest()
    assert BackgroundSha256(b"abc").hexdigest() == hashlib.sha256(b"abc").hexdigest()
