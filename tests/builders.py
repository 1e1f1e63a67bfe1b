"""Build disguised samples in tests from the benign binaries in tests/corpus (real files; origins and licences in tests/corpus/MANIFEST.tsv).

Nothing here is malware: every program is one of the corpus's benign executables under
another name or wrapped in a container; the shortcuts and scripts only name commands.
"""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"
EXE = CORPUS / "executables"
BENIGN = CORPUS / "benign"


def corpus_bytes(rel: str) -> bytes:
    return (CORPUS / rel).read_bytes()


def pe32() -> bytes:
    return corpus_bytes("executables/pe/pe32.exe")


def lnk(target: str = r"C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe",
        arguments: str = "-NoProfile -WindowStyle Hidden -Command Write-Output hello",
        icon: str = "") -> bytes:
    """A minimal MS-SHLLINK shortcut: header plus StringData (relative path, args, icon)."""
    has_relative, has_args, has_icon, unicode_ = 0x8, 0x20, 0x40, 0x80
    flags = has_relative | has_args | unicode_ | (has_icon if icon else 0)
    header = struct.pack(
        "<I16sII8s8s8sIiIHHII", 0x4C,
        bytes.fromhex("0114020000000000c000000000000046"), flags, 0x20,
        b"\0" * 8, b"\0" * 8, b"\0" * 8, 0, 0, 7, 0, 0, 0, 0)
    assert len(header) == 0x4C

    def sdata(text: str) -> bytes:
        return struct.pack("<H", len(text)) + text.encode("utf-16-le")

    body = sdata(target) + sdata(arguments) + (sdata(icon) if icon else b"")
    return header + body + b"\0\0\0\0"


def zip_of(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def seven_zip_of(members: dict[str, bytes]) -> bytes:
    import py7zr

    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as archive:
        for name, data in members.items():
            archive.writestr(data, name)
    return buf.getvalue()


def iso_of(members: dict[str, bytes]) -> bytes:
    """An ISO 9660 image with Joliet names (what Windows shows) for each member."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3)
    for i, (name, data) in enumerate(members.items()):
        iso.add_fp(io.BytesIO(data), len(data), f"/F{i}.;1", joliet_path="/" + name)
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def pdf_with(extra_catalog: str = "", objects: str = "") -> bytes:
    """A small valid-enough PDF; *extra_catalog* goes into the catalog dictionary."""
    body = (
        "%PDF-1.4\n"
        f"1 0 obj << /Type /Catalog /Pages 2 0 R {extra_catalog} >> endobj\n"
        "2 0 obj << /Type /Pages /Kids [3 0 R] /Count 1 >> endobj\n"
        "3 0 obj << /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >> endobj\n"
        f"{objects}"
        "trailer << /Root 1 0 R >>\nstartxref\n0\n%%EOF\n")
    return body.encode("latin-1")


def pdf_with_attachment(name: str, data: bytes) -> bytes:
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(200, 200)
    writer.add_attachment(name, data)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def xlsm_with_macrosheet() -> bytes:
    """An OOXML workbook part list with an Excel 4.0 macro sheet (names only matter)."""
    return zip_of({
        "[Content_Types].xml": b'<?xml version="1.0"?><Types xmlns="http://schemas.openxml'
                               b'formats.org/package/2006/content-types"></Types>',
        "xl/workbook.xml": b"<workbook/>",
        "xl/macrosheets/sheet1.xml": b"<xm:macrosheet/>",
    })
