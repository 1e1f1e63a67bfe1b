"""Malformed inputs for hostile case 9, built from the corpus's real files.

Three kinds, all deterministic for a given seed:

- ``generate(n)``: *n* mutants of real PE, ELF, Mach-O, LNK, ZIP, ISO, OLE and PDF files
  (and of the other archives): truncated, bit-flipped, fields overwritten with boundary
  values, chunks deleted, duplicated or spliced from another file of the same format;
- ``handmade()``: hand-built malformed headers per format (section counts of 0xFFFF, a
  PDF xref /Prev pointing at itself, an OLE FAT chain in a loop ...);
- ``specials(workdir, full)``: files built to blow a limit (zip bombs by ratio, overlap,
  depth 100 and a million entries; a 1 TB sparse file; a macro part that inflates to
  GiBs; millions of YARA string matches) and special files (FIFOs, sockets, links to
  devices), plus the catastrophic YARA rules for ``yara_group``.

Nothing here is malware: every program is one of the corpus's benign executables, damaged.
"""

from __future__ import annotations

import io
import os
import random
import socket
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Iterator

import builders as b

CORPUS = b.CORPUS
OLE_MAGIC = bytes.fromhex("d0cf11e0a1b11ae1")
LNK_HEADER = bytes.fromhex("4c0000000114020000000000c000000000000046")

# Real files per format: globs under the corpus.
_SEED_GLOBS: dict[str, tuple[str, ...]] = {
    "pe": ("executables/pe/*",),
    "elf": ("executables/elf/*",),
    "macho": ("executables/macho/*", "executables/other/*"),
    "lnk": ("executables/lnk/*",),
    "zip": ("benign/zip/*", "benign/docx/*", "benign/xlsx/*", "benign/pptx/*", "benign/odt/*",
            "benign/epub/*", "benign/xps/*", "executables/office-macro/*.docm",
            "executables/office-macro/*.xlsm"),
    "iso": ("benign/iso/*",),
    "ole": ("benign/doc/*", "benign/xls/*", "benign/outlook/*", "executables/office-embedded/*",
            "executables/office-macro/*.ppt"),
    "pdf": ("benign/pdf/*",),
    "other": ("benign/7z/*", "benign/rar/*", "benign/cab/*", "benign/gz/*", "benign/bz2/*",
              "benign/xz/*", "benign/tar/*", "benign/rtf/*", "executables/script/*"),
}


def _built_seeds() -> dict[str, list[tuple[str, bytes]]]:
    """Disguised samples built from benign parts: what an attacker would damage on purpose."""
    pe = b.pe32()
    return {
        "lnk": [("Invoice.pdf.lnk", b.lnk())],
        "zip": [("Contract.zip", b.zip_of({"Contract.pdf.exe": pe, "notes.txt": b"hello"}))],
        "iso": [("Delivery.iso", b.iso_of({"Delivery.pdf.lnk": b.lnk(), "readme.txt": b"x"}))],
        "pdf": [("Invoice.pdf", b.pdf_with_attachment("invoice.exe", pe))],
        "other": [("Archive.7z", b.seven_zip_of({"a.exe": pe}))],
    }


def seeds() -> dict[str, list[tuple[str, bytes]]]:
    out: dict[str, list[tuple[str, bytes]]] = {}
    for fmt, globs in _SEED_GLOBS.items():
        files = sorted({p for g in globs for p in CORPUS.glob(g) if p.is_file()})
        out[fmt] = [(p.name, p.read_bytes()) for p in files]
    for fmt, extra in _built_seeds().items():
        out.setdefault(fmt, []).extend(extra)
    return {fmt: s for fmt, s in out.items() if s}


# --- mutators ---------------------------------------------------------------------------

_INTERESTING = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF,
                0x80000000, 0xFFFFFFFE, 0xFFFFFFFF, 0x7FFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF)


def _offset(rng: random.Random, data: bytes | bytearray) -> int:
    """Mostly in the headers (first 4 KiB), where the parsers' counts and offsets live."""
    if rng.random() < 0.6:
        return rng.randrange(min(len(data), 4096))
    return rng.randrange(len(data))


def _truncate(rng, data, others):
    cut = rng.choice([rng.randrange(len(data)), 1 << rng.randrange(max(1, len(data).bit_length())),
                      len(data) - 1, len(data) // 2, min(len(data) - 1, 64),
                      min(len(data) - 1, 0x8000 + rng.randrange(2048))])
    return data[:max(0, min(cut, len(data) - 1))]


def _flip(rng, data, others):
    out = bytearray(data)
    for _ in range(rng.choice((1, 2, 4, 8, 16, 32))):
        out[_offset(rng, out)] ^= 1 << rng.randrange(8)
    return bytes(out)


def _interesting(rng, data, others):
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        width = rng.choice((1, 2, 4, 8))
        at = _offset(rng, out)
        if at + width > len(out):
            continue
        value = rng.choice(_INTERESTING + (len(data), len(data) + 1, len(data) - 1))
        value &= (1 << (8 * width)) - 1
        out[at:at + width] = value.to_bytes(width, rng.choice(("little", "big")))
    return bytes(out)


def _delete(rng, data, others):
    at = _offset(rng, data)
    return data[:at] + data[at + rng.randint(1, max(1, len(data) // 8)):]


def _duplicate(rng, data, others):
    at = _offset(rng, data)
    chunk = data[at:at + rng.randint(1, 4096)]
    where = rng.randrange(len(data) + 1)
    return data[:where] + chunk * rng.randint(1, 16) + data[where:]


def _insert_random(rng, data, others):
    at = _offset(rng, data)
    return data[:at] + rng.randbytes(rng.randint(1, 512)) + data[at:]


def _splice(rng, data, others):
    other = rng.choice(others)
    at = _offset(rng, data)
    src = rng.randrange(len(other))
    return data[:at] + other[src:src + rng.randint(1, 8192)] + data[at + rng.randint(0, 8192):]


MUTATORS: tuple[Callable, ...] = (_truncate, _flip, _flip, _interesting, _interesting,
                                  _delete, _duplicate, _insert_random, _splice)


def mutate(rng: random.Random, data: bytes, others: list[bytes]) -> tuple[bytes, str]:
    how = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        if not data:
            break
        fn = rng.choice(MUTATORS)
        data = fn(rng, data, others)
        how.append(fn.__name__.lstrip("_"))
    return data, "+".join(how)


def generate(n: int, seed: int = 9) -> Iterator[tuple[str, str, bytes]]:
    """*n* mutants, formats in turn: (label, file name, bytes)."""
    rng = random.Random(seed)
    pool = seeds()
    formats = sorted(pool)
    for i in range(n):
        fmt = formats[i % len(formats)]
        name, data = rng.choice(pool[fmt])
        mutant, how = mutate(rng, data, [d for _, d in pool[fmt]])
        if fmt in ("pe", "elf", "macho") and rng.random() < 0.25:
            name = f"Contract_{i}.pdf"            # a damaged program under a document name
        yield f"gen{i}:{fmt}:{name}:{how}", name, mutant


# --- hand-built malformed headers -----------------------------------------------------

def _patch(data: bytes, *edits: tuple[int, str, int]) -> bytes:
    out = bytearray(data)
    for at, fmt, value in edits:
        struct.pack_into(fmt, out, at, value)
    return bytes(out)


def _pe_fields(data: bytes) -> dict[str, int]:
    lfanew, = struct.unpack_from("<I", data, 0x3C)
    opt = lfanew + 24
    size_opt, = struct.unpack_from("<H", data, lfanew + 20)
    magic, = struct.unpack_from("<H", data, opt)
    dirs = opt + (96 if magic == 0x10B else 112)
    return {"lfanew": lfanew, "nsec": lfanew + 6, "size_opt": lfanew + 20, "opt": opt,
            "nrva": dirs - 4, "dirs": dirs, "sections": opt + size_opt}


def _pe_cases() -> Iterator[tuple[str, bytes]]:
    for seed in ("pe32.exe", "cli-64.exe"):
        pe = (CORPUS / "executables/pe" / seed).read_bytes()
        f = _pe_fields(pe)
        yield f"{seed}-sections-ffff", _patch(pe, (f["nsec"], "<H", 0xFFFF))
        yield f"{seed}-opthdr-ffff", _patch(pe, (f["size_opt"], "<H", 0xFFFF))
        yield f"{seed}-rva-count-huge", _patch(pe, (f["nrva"], "<I", 0xFFFFFFFF))
        dirs = bytearray(pe)
        for k in range(16):
            struct.pack_into("<II", dirs, f["dirs"] + 8 * k, 0xFFFFFFF0, 0xFFFFFFFF)
        yield f"{seed}-datadirs-past-eof", bytes(dirs)
        secs = bytearray(pe)
        nsec, = struct.unpack_from("<H", pe, f["nsec"])
        for k in range(nsec):
            at = f["sections"] + 40 * k
            if at + 40 <= len(secs):
                struct.pack_into("<IIII", secs, at + 8, 0xFFFFFFFF, 0xFFFFF000, 0x7FFFFFFF,
                                 0xFFFFFF00)
        yield f"{seed}-sections-past-eof", bytes(secs)
        yield f"{seed}-cut-after-signature", pe[:f["lfanew"] + 8]
        yield f"{seed}-cut-in-sections", pe[:f["sections"] + 20]
    stub = bytearray(b"MZ" + b"\0" * 0x3E)
    struct.pack_into("<I", stub, 0x3C, 0x40)
    yield "pe-signature-only", bytes(stub) + b"PE\0\0"
    yield "pe-headers-zero", bytes(stub) + b"PE\0\0" + b"\0" * 300
    yield "pe-headers-ff", bytes(stub) + b"PE\0\0" + b"\xff" * 300


def _elf_cases() -> Iterator[tuple[str, bytes]]:
    elf = (CORPUS / "executables/elf/elf64.elf").read_bytes()
    so = (CORPUS / "executables/elf/_psutil_linux.abi3.so").read_bytes()
    yield "elf64-phnum-ffff", _patch(elf, (0x38, "<H", 0xFFFF), (0x20, "<Q", 0xFFFFFFFFFFFF0000))
    yield "elf64-shnum-ffff", _patch(so, (0x3C, "<H", 0xFFFF), (0x3E, "<H", 0xFFFE))
    yield "elf64-shoff-past-eof", _patch(so, (0x28, "<Q", 0x7FFFFFFFFFFFFFFF))
    yield "elf-class-3", _patch(elf, (4, "<B", 3))
    yield "elf-header-only", elf[:0x40]
    yield "elf-magic-only", elf[:5]


def _macho_cases() -> Iterator[tuple[str, bytes]]:
    m = (CORPUS / "executables/macho/_psutil_osx.abi3.so").read_bytes()
    yield "macho-ncmds-huge", _patch(m, (16, "<I", 0xFFFFFFFF), (20, "<I", 0xFFFFFFFF))
    yield "macho-cmdsize-zero", _patch(m, (32 + 4, "<I", 0))
    yield "macho-header-only", m[:28]
    fat = struct.pack(">II", 0xCAFEBABE, 19) + b"".join(
        struct.pack(">IIIII", 0x0100000C, 0, 0xFFFFFF00, 0xFFFFFFFF, 12) for _ in range(19))
    yield "fat-19-archs-past-eof", fat
    inner = struct.pack(">II", 0xCAFEBABE, 1) + struct.pack(">IIIII", 0x0100000C, 0, 0, 48, 12)
    yield "fat-arch-points-at-itself", inner + b"\0" * 20


def _lnk_cases() -> Iterator[tuple[str, bytes]]:
    base = b.lnk()
    yield "lnk-all-flags", LNK_HEADER + _patch(base, (0x14, "<I", 0xFFFFFFFF))[20:0x4C]
    yield "lnk-idlist-past-eof", _patch(base, (0x14, "<I", 0x1 | 0x80)) [:0x4C] + b"\xff\xff"
    yield "lnk-stringdata-huge", base[:0x4C] + b"\xff\xff" + "x".encode("utf-16-le")
    yield "lnk-extradata-huge", base[:-4] + struct.pack("<II", 0xFFFFFFFF, 0xA0000001) + b"\0" * 8
    real = (CORPUS / "executables/lnk/microsoft_example.lnk").read_bytes()
    yield "lnk-linkinfo-size-zero", _patch(real, (0x4C + 2 + struct.unpack_from(
        "<H", real, 0x4C)[0], "<I", 0))
    yield "lnk-header-only", LNK_HEADER
    yield "lnk-header-zero-rest", LNK_HEADER + b"\0" * 100


def _zip_cases() -> Iterator[tuple[str, bytes]]:
    z = b.zip_of({"Contract.pdf.exe": b.pe32(), "a.txt": b"hello" * 100})
    eocd = z.rindex(b"PK\x05\x06")
    cd, = struct.unpack_from("<I", z, eocd + 16)
    yield "zip-cd-offset-past-eof", _patch(z, (eocd + 16, "<I", 0xFFFFFF00))
    yield "zip-cd-size-huge", _patch(z, (eocd + 12, "<I", 0xFFFFFFF0))
    yield "zip-entry-count-ffff", _patch(z, (eocd + 8, "<H", 0xFFFF), (eocd + 10, "<H", 0xFFFF))
    yield "zip-name-length-ffff", _patch(z, (cd + 28, "<H", 0xFFFF))
    yield "zip-extra-length-ffff", _patch(z, (cd + 30, "<H", 0xFFFF))
    yield "zip-comment-length-past-eof", _patch(z, (eocd + 20, "<H", 0xFFFF))
    yield "zip-method-99", _patch(z, (cd + 10, "<H", 99), (8, "<H", 99))
    yield "zip-method-lzma-garbage", _patch(z, (cd + 10, "<H", 14), (8, "<H", 14))
    yield "zip-method-bzip2-garbage", _patch(z, (cd + 10, "<H", 12), (8, "<H", 12))
    yield "zip-compressed-size-huge", _patch(z, (cd + 20, "<I", 0xFFFFFFFE), (18, "<I", 0xFFFFFFFE))
    yield "zip-size-lies-small", _patch(z, (cd + 24, "<I", 3), (22, "<I", 3))
    yield "zip-local-offset-past-eof", _patch(z, (cd + 42, "<I", 0x7FFFFFF0))
    zip64 = z[:eocd] + struct.pack("<IIQI", 0x07064B50, 0, 0xFFFFFFFFFFFFFFF0, 1) + z[eocd:]
    yield "zip64-locator-garbage", _patch(zip64, (len(zip64) - 22 + 16, "<I", 0xFFFFFFFF))
    yield "zip-eocd-only", b"PK\x05\x06" + b"\0" * 18
    yield "zip-many-eocds", z + (b"PK\x05\x06" + b"\xff" * 18) * 200
    yield "zip-traversal-names", b.zip_of({"../../../../etc/passwd": b"x", "/abs/Invoice.pdf.exe":
                                           b.pe32(), "C:\\Windows\\x.exe": b.pe32()})


def _iso_cases() -> Iterator[tuple[str, bytes]]:
    iso = b.iso_of({"Delivery.pdf.lnk": b.lnk(), "a.txt": b"hello"})
    pvd = 0x8000
    yield "iso-path-table-huge", _patch(iso, (pvd + 132, "<I", 0x7FFFFFFF))
    yield "iso-volume-blocks-huge", _patch(iso, (pvd + 80, "<I", 0xFFFFFFFF))
    yield "iso-block-size-1", _patch(iso, (pvd + 128, "<H", 1))
    yield "iso-block-size-zero", _patch(iso, (pvd + 128, "<H", 0))
    root = pvd + 156
    yield "iso-root-extent-past-eof", _patch(iso, (root + 2, "<I", 0x7FFFFFF0))
    yield "iso-root-size-huge", _patch(iso, (root + 10, "<I", 0xFFFFFFF0))
    # No set terminator: every descriptor after the PVD is another PVD.
    yield "iso-no-terminator", iso[:0x8800] + iso[0x8000:0x8800] * 30 + iso[0x8800:]
    yield "iso-cut-after-pvd", iso[:0x8800]
    # The root directory's first entry ('.') extent rewritten to point at a file's extent
    # and the file entries at the root: a directory loop.
    loop = bytearray(iso)
    extent, = struct.unpack_from("<I", iso, root + 2)
    at = extent * 2048
    first_len = loop[at]
    second = at + first_len
    if loop[second] >= 34:
        struct.pack_into("<I", loop, second + 2, extent)      # '..' -> the root itself
        struct.pack_into(">I", loop, second + 6, extent)
        loop[second + 25] |= 2                                 # and a folder
    yield "iso-directory-loop", bytes(loop)


def _ole_cases() -> Iterator[tuple[str, bytes]]:
    doc = (CORPUS / "benign/doc/harmless-clean.doc").read_bytes()
    yield "ole-sector-shift-ffff", _patch(doc, (0x1E, "<H", 0xFFFF))
    yield "ole-sector-shift-zero", _patch(doc, (0x1E, "<H", 0))
    yield "ole-fat-sectors-huge", _patch(doc, (0x2C, "<I", 0xFFFFFFF0))
    yield "ole-dir-sector-past-eof", _patch(doc, (0x30, "<I", 0x00FFFFFF))
    yield "ole-mini-cutoff-zero", _patch(doc, (0x38, "<I", 0))
    yield "ole-difat-loop", _patch(doc, (0x44, "<I", 0), (0x48, "<I", 0xFFFF))
    first_fat, = struct.unpack_from("<I", doc, 0x4C)
    fat_at = 512 * (first_fat + 1)
    dir_sector, = struct.unpack_from("<I", doc, 0x30)
    loop = bytearray(doc)
    if fat_at + 4 * dir_sector + 4 <= len(loop):
        struct.pack_into("<I", loop, fat_at + 4 * dir_sector, dir_sector)   # chain to itself
    yield "ole-fat-chain-loop", bytes(loop)
    cyc = bytearray(doc)
    root = 512 * (dir_sector + 1)
    for k in range(4):                                   # siblings and children all -> 1
        struct.pack_into("<III", cyc, root + 128 * k + 0x44, 1, 1, 1)
    yield "ole-dir-tree-cycle", bytes(cyc)
    yield "ole-header-only", doc[:512]
    yield "ole-magic-only", OLE_MAGIC
    emb = (CORPUS / "executables/office-embedded/sample_with_calc_embedded.doc").read_bytes()
    yield "ole-native-stream-claims-2GB-in-a-loop", _ole_stream_loop(emb, "\x01Ole10Native")
    yield "ole-word-stream-claims-2GB-in-a-loop", _ole_stream_loop(doc, "WordDocument")
    vba = (CORPUS / "executables/office-macro/sample_with_vba.ppt").read_bytes()
    yield "ole-root-entry-claims-2GB-in-a-loop", _ole_root_loop(vba)
    yield "ole-minifat-claims-1GB-in-a-loop", _ole_minifat_loop(vba)


def _ole_chain(ole, start: int, limit: int = 100_000) -> list[int]:
    """The FAT sector chain from *start*, up to its end or the first sector seen twice."""
    chain, sect = [], start
    while sect < len(ole.fat) and sect not in chain and len(chain) < limit:
        chain.append(sect)
        sect = ole.fat[sect]
    return chain


def _close_loop(out: bytearray, data: bytes, sector: int, chain: list[int]) -> None:
    """Point the FAT entry of *chain*'s last sector back at its first: a loop."""
    fat_sectors = struct.unpack_from("<109I", data, 0x4C)
    last, per_fat = chain[-1], sector // 4
    struct.pack_into("<I", out, (fat_sectors[last // per_fat] + 1) * sector + (last % per_fat) * 4,
                     chain[0])


def _ole_minifat_loop(data: bytes, sectors: int = 0x200000) -> bytes:
    """The header claims *sectors* MiniFAT sectors and the MiniFAT's chain loops: olefile
    reads the MiniFAT round the loop (1 GB for 0x200000) when a small stream is opened."""
    import olefile

    with olefile.OleFileIO(io.BytesIO(data)) as ole:
        start, = struct.unpack_from("<I", data, 0x3C)
        out = bytearray(data)
        struct.pack_into("<I", out, 0x40, sectors)
        _close_loop(out, data, ole.sector_size, _ole_chain(ole, start))
    return bytes(out)


def _ole_root_loop(data: bytes) -> bytes:
    """The root entry (the mini stream) declares 2 GB and its chain loops; the MiniFAT
    claims 0x10000 sectors. olevba, opening the mini stream, reads GBs round the loop."""
    import olefile

    with olefile.OleFileIO(io.BytesIO(data)) as ole:
        root_at = (ole.first_dir_sector + 1) * ole.sector_size
        start, = struct.unpack_from("<I", data, root_at + 0x74)
        out = bytearray(data)
        struct.pack_into("<I", out, root_at + 0x78, 0x7FFFFFF0)
        struct.pack_into("<I", out, 0x40, 0x10000)
        _close_loop(out, data, ole.sector_size, _ole_chain(ole, start))
    return bytes(out)


def _ole_stream_loop(data: bytes, stream: str) -> bytes:
    """*stream*'s declared size set to 2 GB and its sector chain closed into a loop: olefile
    follows the loop for as long as the size asks (0.47 reads it all into memory)."""
    import olefile

    with olefile.OleFileIO(io.BytesIO(data)) as ole:
        entry = next(e for e in ole.direntries if e is not None and e.name == stream)
        sector = ole.sector_size
        dir_chain = _ole_chain(ole, ole.first_dir_sector)
        per = sector // 128
        at = (dir_chain[entry.sid // per] + 1) * sector + (entry.sid % per) * 128
        out = bytearray(data)
        struct.pack_into("<I", out, at + 0x78, 0x7FFFFFFF)             # size: 2 GB
        _close_loop(out, data, sector, _ole_chain(ole, entry.isectStart))
    return bytes(out)


def _pdf_cases() -> Iterator[tuple[str, bytes]]:
    emb = b"/EmbeddedFiles"
    yield "pdf-prev-loop", (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Names << " + emb +
                            b" 2 0 R >> >> endobj\n2 0 obj << /Names [(a.exe) 3 0 R] >> endobj\n"
                            b"xref\n0 1\n0000000000 65535 f \ntrailer << /Root 1 0 R /Prev 150 "
                            b"/Size 4 >>\nstartxref\n150\n%%EOF\n")
    yield "pdf-deep-arrays", b"%PDF-1.4\n1 0 obj " + b"[" * 200_000 + emb + b"]" * 10 + \
        b"\nendobj\ntrailer << /Root 1 0 R >>\nstartxref\n0\n%%EOF\n"
    yield "pdf-deep-dicts", b"%PDF-1.4\n1 0 obj " + b"<< /A " * 50_000 + emb + \
        b"\nendobj\ntrailer << /Root 1 0 R >>\nstartxref\n0\n%%EOF\n"
    yield "pdf-length-huge", b.pdf_with(objects="4 0 obj << /Type /EmbeddedFile /Length "
                                        "99999999999 >> stream\nabc\nendstream endobj\n")
    yield "pdf-name-tree-loop", b.pdf_with(
        "/Names << /EmbeddedFiles 4 0 R >>",
        "4 0 obj << /Kids [4 0 R 5 0 R] >> endobj\n5 0 obj << /Kids [4 0 R] >> endobj\n")
    yield "pdf-pages-loop", (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R /Names << " + emb +
                             b" 3 0 R >> >> endobj\n2 0 obj << /Type /Pages /Kids [2 0 R] /Count "
                             b"1 >> endobj\n3 0 obj << /Names [(x) 3 0 R] >> endobj\n"
                             b"trailer << /Root 1 0 R >>\nstartxref\n0\n%%EOF\n")
    yield "pdf-filter-chain", b.pdf_with(
        "/Names << /EmbeddedFiles << /Names [(a.exe) 4 0 R] >> >>",
        "4 0 obj << /Type /Filespec /F (a.exe) /EF << /F 5 0 R >> >> endobj\n"
        "5 0 obj << /Type /EmbeddedFile /Filter [" + "/FlateDecode " * 2000 +
        "] /Length 3 >> stream\nabc\nendstream endobj\n")
    yield "pdf-objstm-self", b.pdf_with(
        "/Names << /EmbeddedFiles 4 0 R >>",
        "4 0 obj << /Type /ObjStm /N 1000000 /First 0 /Length 4 >> stream\n4 0 \nendstream "
        "endobj\n")
    yield "pdf-js-keywords", b.pdf_with(objects="4 0 obj << /JS (x) >> endobj\n" * 1) + \
        b"/JavaScript /J#61vaScript " * 100_000
    yield "pdf-startxref-past-eof", b.pdf_with("/Names << /EmbeddedFiles 9 0 R >>").replace(
        b"startxref\n0", b"startxref\n99999999999")
    good = b.pdf_with_attachment("invoice.exe", b.pe32())
    yield "pdf-attachment-cut", good[: len(good) * 2 // 3]
    yield "pdf-only-header", b"%PDF-1.7\n" + emb


def handmade() -> Iterator[tuple[str, str, bytes, str]]:
    """(label, file name, bytes, expect). Programs keep their magic and go under a document
    name: whatever is damaged behind the magic, they must still be flagged."""
    for label, data in _pe_cases():
        yield f"hand:{label}", "Invoice.pdf", data, "flagged"
    for label, data in _elf_cases():
        yield f"hand:{label}", "Invoice.pdf", data, "flagged" if data[:4] == b"\x7fELF" else ""
    for label, data in _macho_cases():
        yield f"hand:{label}", "Invoice.pdf", data, "flagged"
    for label, data in _lnk_cases():
        yield f"hand:{label}", "Invoice.pdf.lnk", data, "flagged"
    for label, data in _zip_cases():
        yield f"hand:{label}", "Archive.zip", data, ""
    for label, data in _iso_cases():
        yield f"hand:{label}", "Delivery.iso", data, ""
    for label, data in _ole_cases():
        yield f"hand:{label}", "Report.doc", data, "limit" if "loop" in label and \
            "claims" in label else ""
    for label, data in _pdf_cases():
        yield f"hand:{label}", "Report.pdf", data, ""


# --- files built to blow a limit, and special files -------------------------------------

def _deflate_zeros(size: int) -> tuple[bytes, int]:
    """Raw deflate of *size* zero bytes (streamed, never held whole), and its CRC."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = b"\0" * (1 << 20)
    out, crc, left = [], 0, size
    while left:
        chunk = block[:min(left, len(block))]
        out.append(co.compress(chunk))
        crc = zlib.crc32(chunk, crc)
        left -= len(chunk)
    out.append(co.flush())
    return b"".join(out), crc


def _zip_raw(entries: list[tuple[str, bytes, int, int, int]], shared: bool = False) -> bytes:
    """A zip from (name, deflated data, crc, size, method) entries, zip64 sizes when needed.
    *shared*: every central-directory entry points at the first local file (an overlap
    bomb, Fifield's trick): one kernel, expanded once per entry."""
    local, central = bytearray(), bytearray()
    first_at = 0
    for k, (name, data, crc, size, method) in enumerate(entries):
        raw = name.encode()
        z64 = size >= 0xFFFFFFFF
        extra = struct.pack("<HHQQ", 1, 16, size, len(data)) if z64 else b""
        sizes = (0xFFFFFFFF, 0xFFFFFFFF) if z64 else (len(data), size)
        at = first_at if shared and k else len(local)
        if not (shared and k):
            local += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, method, 0, 0, crc,
                                 *sizes, len(raw), len(extra)) + raw + extra + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, method, 0, 0, crc,
                               *sizes, len(raw), len(extra), 0, 0, 0, 0, at) + raw + extra
    count = len(entries)
    tail = bytearray()
    if count >= 0xFFFF or len(local) >= 0xFFFFFFFF:
        z64_at = len(local) + len(central)
        tail += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count,
                            len(central), len(local))
        tail += struct.pack("<IIQI", 0x07064B50, 0, z64_at, 1)
    tail += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, min(count, 0xFFFF), min(count, 0xFFFF),
                        len(central), min(len(local), 0xFFFFFFFF), 0)
    return bytes(local + central + tail)


def million_entries(count: int) -> bytes:
    """A stored zip of *count* empty members, built directly (zipfile would take minutes)."""
    local_parts, central_parts = [], []
    at = 0
    lh = struct.Struct("<IHHHHHIIIHH")
    ch = struct.Struct("<IHHHHHHIIIHHHHHII")
    for k in range(count):
        raw = b"%x" % k
        local_parts.append(lh.pack(0x04034B50, 20, 0, 0, 0, 0, 0, 0, 0, len(raw), 0) + raw)
        central_parts.append(ch.pack(0x02014B50, 20, 20, 0, 0, 0, 0, 0, 0, 0, len(raw), 0, 0, 0,
                                     0, 0, at) + raw)
        at += 30 + len(raw)
    local, central = b"".join(local_parts), b"".join(central_parts)
    z64 = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, len(central),
                      len(local)) + struct.pack("<IIQI", 0x07064B50, 0, len(local) + len(central), 1)
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, min(count, 0xFFFF), min(count, 0xFFFF),
                       len(central), len(local), 0)
    return local + central + z64 + eocd


def nested(depth: int) -> bytes:
    data = b.zip_of({"Invoice.pdf.exe": b.pe32()})
    for i in range(depth):
        data = b.zip_of({f"level{i}.zip": data})
    return data


def vba_part_bomb(size: int) -> bytes:
    """A macro-enabled Word file whose vbaProject.bin claims *size* bytes: an OLE magic and
    then zeros, deflated (about 1 KiB per MiB)."""
    body = b"\0" * (1 << 20)
    buf = io.BytesIO()
    ct = (b'<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/'
          b'content-types"><Override PartName="/word/document.xml" ContentType="application/'
          b'vnd.ms-word.document.macroEnabled.main+xml"/></Types>')
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", ct)
        zf.writestr("word/document.xml", b"<w:document/>")
        with zf.open("word/vbaProject.bin", "w", force_zip64=True) as fh:
            fh.write(OLE_MAGIC)
            for _ in range(size >> 20):
                fh.write(body)
    return buf.getvalue()


def pdf_attachment_bomb(size: int, count: int = 1) -> bytes:
    """A PDF with *count* attached files, all named a.exe, each *size* zero bytes deflated
    (a separate stream each: pypdf inflates every one)."""
    comp, _ = _deflate_zeros(size)
    comp = b"\x78\x9c" + comp                 # the zlib wrapper FlateDecode expects
    names, objs = [], []
    for k in range(count):
        spec, body = 4 + 2 * k, 5 + 2 * k
        names.append(b"(a.exe) %d 0 R" % spec)
        objs.append(b"%d 0 obj << /Type /Filespec /F (a.exe) /EF << /F %d 0 R >> >> endobj\n"
                    % (spec, body))
        objs.append(b"%d 0 obj << /Type /EmbeddedFile /Filter /FlateDecode /Length %d >> "
                    b"stream\n" % (body, len(comp)) + comp + b"\nendstream endobj\n")
    return (b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R /Names << /EmbeddedFiles << "
            b"/Names [" + b" ".join(names) + b"] >> >> >> endobj\n2 0 obj << /Type /Pages "
            b"/Kids [3 0 R] /Count 1 >> endobj\n3 0 obj << /Type /Page /Parent 2 0 R /MediaBox "
            b"[0 0 9 9] >> endobj\n" + b"".join(objs) +
            b"trailer << /Root 1 0 R >>\nstartxref\n0\n%%EOF\n")


# Strings of the bundled rules, repeated: far more than a million matches per string.
MANY_MATCHES = b"curl |sh curl | bash osascript do shell script .vbs "


def specials(workdir: Path, full: bool) -> Iterator[tuple[str, str, str, bool]]:
    """Create the limit-blowing and special files in *workdir*: (label, path, expect, follow).
    Disk use stays small: bombs are a few MiB, the 1 TB file is sparse."""
    d = workdir / "special"
    d.mkdir(parents=True, exist_ok=True)

    def put(name: str, data: bytes) -> str:
        p = d / name
        p.write_bytes(data)
        return str(p)

    ratio_size = (4 << 30) if full else (320 << 20)
    comp, crc = _deflate_zeros(ratio_size)
    yield "bomb:ratio", put("ratio.zip", _zip_raw([("zeros.txt", comp, crc, ratio_size, 8)])), \
        "limit", True
    kernel, kcrc = _deflate_zeros(8 << 20)
    overlap = [(f"f{k}.bin", kernel, kcrc, 8 << 20, 8) for k in range(2000 if full else 200)]
    yield "bomb:overlap", put("overlap.zip", _zip_raw(overlap, shared=True)), "limit", True
    yield "bomb:depth-100", put("depth100.zip", nested(100)), "limit", True
    count = 1_000_000 if full else 60_000
    yield f"bomb:{count}-entries", put("entries.zip", million_entries(count)), "limit", True
    gz_size = (4 << 30) if full else (320 << 20)
    gz_body, gz_crc = _deflate_zeros(gz_size)
    yield "bomb:gzip", put("logs.gz", b"\x1f\x8b\x08\0\0\0\0\0\0\xff" + gz_body + struct.pack(
        "<II", gz_crc, gz_size & 0xFFFFFFFF)), "limit", True
    vba = (4 << 30) if full else (1 << 30)
    yield "bomb:vba-part", put("Invoice.docm", vba_part_bomb(vba)), "limit", True
    yield "bomb:pdf-attachment", put("Invoice.pdf", pdf_attachment_bomb(
        (4 << 30) if full else (1 << 30))), "limit", True
    # Files just under pypdf's 75 MB cap, all named alike (pypdf inflated them all at once).
    yield "bomb:pdf-many-attachments", put("Statement.pdf", pdf_attachment_bomb(
        70_000_000, 100 if full else 20)), "limit", True
    # One string of the bundled rules 1.1 million times: libyara's cap, the scan stops.
    yield "yara:million-matches-one-string", put("notes.sh", b"|sh" * 1_100_000), "limit", True
    if full:    # many strings, ~10 million matches: the YARA time limit stops this one
        yield "yara:millions-of-matches", put("notes2.sh", MANY_MATCHES * 525_000), "limit", True
    sparse = d / "backup.img"
    for size, label in ((1 << 40, "1TB"), (64 << 30, "64GB")):   # a smaller one where the
        try:                                                     # file system caps sizes
            with open(sparse, "wb") as fh:
                fh.truncate(size)                                # no blocks on disk
            break
        except OSError:
            continue
    yield f"sparse:{label}", str(sparse), "limit", True
    fifo = d / "Invoice.pdf.fifo"
    os.mkfifo(fifo)
    yield "special:fifo-no-writer", str(fifo), "skipped", True
    yield "special:fifo-no-writer-nofollow", str(fifo), "skipped", False
    sock_path = d / "s.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    sock.close()                                # the socket file stays, nobody listens
    yield "special:socket", str(sock_path), "skipped", True
    for target, name in (("/dev/zero", "zero.pdf"), ("/dev/urandom", "random.exe"),
                         (str(fifo), "to-fifo.docx"), ("/dev/null", "null.txt")):
        link = d / name
        link.symlink_to(target)
        yield f"special:link-to-{Path(target).name}", str(link), "skipped", True
        yield f"special:link-to-{Path(target).name}-nofollow", str(link), "skipped", False
    yield "special:dev-zero", "/dev/zero", "skipped", True
    loop_a, loop_b = d / "loop-a.pdf", d / "loop-b.pdf"
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    yield "special:symlink-loop", str(loop_a), "", True
    (d / "dangling.pdf").symlink_to(d / "nowhere")
    yield "special:dangling-link", str(d / "dangling.pdf"), "", True
    yield "special:folder", str(d), "skipped", True


# Catastrophic rules, passed as an extra rules folder beside the bundled ones.
CATASTROPHIC_RULES = r"""
rule hostile_millions_of_matches {
    strings: $a = "A" $b = "AA" $c = /A{1,400}/
    condition: #a > 0 and #b > 0 and #c > 0
}
rule hostile_nested_quantifiers {
    strings: $r = /A[^B]{0,1000}(A|AA)*B/
    condition: $r
}
rule hostile_quadratic_condition {
    condition: for any i in (0..filesize - 1): (
        for any j in (0..filesize - 1): (uint8(i) == 0x42 and uint8(j) == 0x43))
}
"""


def yara_group(workdir: Path, full: bool) -> tuple[str, list[tuple[str, str, str]]]:
    """(rules folder, [(label, path, expect)]) for the catastrophic-rule scans."""
    rules = workdir / "hostile-rules"
    rules.mkdir(parents=True, exist_ok=True)
    (rules / "catastrophic.yar").write_text(CATASTROPHIC_RULES)
    d = workdir / "yara-inputs"
    d.mkdir(exist_ok=True)
    files = [("yara:all-A-8MB", "letters.txt", b"A" * (8 << 20), "limit"),
             ("yara:all-A-1MB", "letters2.txt", b"A" * (1 << 20), "limit"),
             ("yara:random-16MB", "blob.bin", random.Random(9).randbytes(16 << 20), "limit"),
             ("yara:small-pdf", "small.pdf", b.pdf_with(), "")]
    if full:
        files.append(("yara:all-A-64MB", "letters3.txt", b"A" * (64 << 20), "limit"))
    out = []
    for label, name, data, expect in files:
        (d / name).write_bytes(data)
        out.append((label, str(d / name), expect))
    return str(rules), out
