"""Name checks: the tricks are caught, the ordinary names people give documents are not."""

from __future__ import annotations

import pytest

from guard.identify.names import analyze_name, printable
from guard.verdict import Family

# Ordinary document names in many languages and scripts, with the marks their writing
# systems use (ZWNJ in Persian, RLM in Hebrew and Arabic, combining marks, CJK, emoji).
ORDINARY = [
    "Contract.pdf", "Договор поставки №12.docx", "合同（最终版）.pdf", "請求書_2026年11月.xlsx",
    "계약서 최종.hwp.pdf", "قرارداد\u200cنهایی.pdf", "חוזה\u200f סופי.docx", "عقد العمل.pdf",
    "Vertrag über Leistungen.pdf", "Facture n° 2026-11.pdf", "Ελληνικό έγγραφο.odt",
    "सहमति पत्र.pdf", "ข้อตกลง.pdf", "Hợp đồng lao động.docx", "Sözleşme – Ek 1.pdf",
    "Meeting notes  v2.docx", "Q3 report (final) (1).pdf", "Scan 2026-11-25 at 10.41.12.png",
    "photo 👨\u200d👩\u200d👧.jpg", "résumé.pdf", "archive.tar.gz", "v1.2.3.zip",
    "setup.x64.msi", "report.final.v2.pdf", "Wait... what.docx", "notes.md",
    "README", ".hidden", "pdf.js", "pdf.worker.min.js", "convert.py", "IMG_0001.HEIC",
    "a.b.c.d.txt", "Invoice - copy.pdf", "data_2026_11_25.csv",
]


@pytest.mark.parametrize("name", ORDINARY)
def test_ordinary_names_raise_nothing(name):
    f = analyze_name(name)
    assert not f.bidi_controls
    assert not f.padded
    assert not (f.inner_claimed and f.claimed.runs), f
    assert not f.lure_token


@pytest.mark.parametrize("name,ext,claimed", [
    ("Contract.pdf.exe", "exe", Family.EXECUTABLE), ("photo.JPG", "jpg", Family.IMAGE),
    ("a.lnk", "lnk", Family.SHORTCUT), ("x.HTA", "hta", Family.SCRIPT),
    ("disk.img", "img", Family.DISK_IMAGE), ("noext", "", Family.OTHER),
    ("weird.", "", Family.OTHER), (".bashrc", "", Family.OTHER),
])
def test_claimed_family(name, ext, claimed):
    f = analyze_name(name)
    assert (f.extension, f.claimed) == (ext, claimed)


@pytest.mark.parametrize("name", [
    "Contract.pdf.exe", "Contract.PDF.EXE", "Contract.pdf .exe", "photo.jpg.scr",
    "Invoice.docx.js", "Invoice.xlsx.lnk", "scan.png.hta", "doc.pdf.bat",
])
def test_double_extension(name):
    f = analyze_name(name)
    assert f.inner_claimed is not None and f.claimed.runs


@pytest.mark.parametrize("ch", ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e",
                                "\u2066", "\u2067", "\u2068", "\u2069"])
def test_every_bidi_control_is_seen(ch):
    assert analyze_name(f"Invoice{ch}fdp.exe").bidi_controls == (f"U+{ord(ch):04X}",)


@pytest.mark.parametrize("name,padded", [
    ("Invoice" + " " * 5 + ".exe", True), ("Invoice" + " " * 4 + ".exe", False),
    ("Invoice.pdf" + "\u3164" * 6 + ".exe", True), ("Invoice" + "." * 6 + "exe", True),
    ("A" + " " * 16 + "B.docx", True), ("A" + " " * 15 + "B.docx", False),
])
def test_padding_thresholds(name, padded):
    assert analyze_name(name).padded is padded


def test_printable_escapes_controls_and_bad_bytes():
    import os

    raw = os.fsdecode(b"bad\xff\x1b[31m\nname\xe2\x80\xae.pdf")
    shown = printable(raw)
    assert "\n" not in shown and "\x1b" not in shown and "\u202e" not in shown
    assert "\\xff" in shown and "\\u001b" in shown and "\\u202e" in shown
