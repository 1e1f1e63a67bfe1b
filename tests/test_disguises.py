"""Disguised samples built from the corpus's benign executables: each is caught, with the
right reason code and a sentence that names the file and what it really is."""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile

import pytest

import builders as b
from guard.verdict import Level

PDF_JS = "/OpenAction << /S /JavaScript /JS (app.alert\\(1\\)) >>"


def _tgz(name: str, data: bytes) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


def _docx_with(member: str, data: bytes) -> bytes:
    buf = io.BytesIO(b.corpus_bytes("benign/docx/harmless-clean.docx"))
    with zipfile.ZipFile(buf, "a") as zf:
        zf.writestr(member, data)
    return buf.getvalue()


def _cases():
    pe, elf = b.pe32(), b.corpus_bytes("executables/elf/elf64.elf")
    macho = b.corpus_bytes("executables/macho/_psutil_posix.abi3.so")
    js = b.corpus_bytes("executables/script/code.js")
    bat = b.corpus_bytes("executables/script/simple.bat")
    lnk = b.corpus_bytes("executables/lnk/sample.lnk")
    ps_lnk = b.lnk()
    hta = b"<html><head><HTA:APPLICATION ID=x></head><body>hello</body></html>"
    url = b"[InternetShortcut]\r\nURL=file://198.51.100.7/share/update.exe\r\n"
    # (file name, content, code that must be present, words the sentence must contain)
    return [
        ("Contract.pdf", pe, "type-mismatch", "Windows program, not a PDF"),
        ("Invoice.docx", b.corpus_bytes("executables/pe/t64.exe"), "type-mismatch",
         "not a Word document"),
        ("photo.jpg", elf, "type-mismatch", "Linux program"),
        ("statement.xlsx", macho, "type-mismatch", "macOS program"),
        ("Invoice.pdf", js, "type-mismatch", "JavaScript"),
        ("report.pdf", bat, "type-mismatch", "batch"),
        ("Contract.pdf", lnk, "type-mismatch", "Windows shortcut"),
        ("terms.pdf", hta, "type-mismatch", "HTML application"),
        ("Contract.pdf.exe", pe, "double-extension", "pretends to be a PDF"),
        ("Agreement.docx.lnk", ps_lnk, "double-extension", "Word document"),
        ("Contract.pdf.url", url, "double-extension", "internet shortcut"),
        ("Invoice_2026" + " " * 40 + ".exe", pe, "padded-name", "blank characters"),
        ("Invoice\u2800\u2800\u2800\u2800\u2800\u2800.scr", pe, "padded-name", "Windows program"),
        ("Contract\u202efdp.exe", pe, "bidi-override", "reverse"),
        ("Report\u2066\u2069.docx.exe", pe, "bidi-override", "hidden characters"),
        ("Contract_PDF.lnk", lnk, "lure-name", "look like a PDF"),
        ("Invoice (pdf).js", js, "lure-name", "look like a PDF"),
        ("docs.zip", b.zip_of({"Contract.pdf.exe": pe}), "exec-in-container",
         "disguised as a PDF"),
        ("docs.zip", b.zip_of({"Contract.pdf.lnk": lnk}), "exec-in-container", "shortcut"),
        ("meeting.iso", b.iso_of({"Invoice.pdf.lnk": ps_lnk}), "exec-in-container",
         "disguised as a PDF"),
        ("files.7z", b.seven_zip_of({"Statement.pdf": pe}), "exec-in-container",
         "disguised as a PDF"),
        ("bundle.zip", b.zip_of({"inner.zip": b.zip_of({"Scan.jpg": elf})}),
         "exec-in-container", "disguised as a picture"),
        ("backup.tar.gz", _tgz("Invoice.pdf.exe", pe), "exec-in-container", "PDF"),
        ("Contract.pdf", b.zip_of({"setup.exe": pe}), "exec-in-container", "setup.exe"),
        ("terms.pdf", b.pdf_with_attachment("invoice.exe", pe), "embedded-executable",
         "hidden inside"),
        ("offer.docx", _docx_with("word/embeddings/payload.bin", pe), "embedded-executable",
         "hidden inside"),
        ("offer.doc", b.corpus_bytes("executables/office-embedded/sample_with_calc_embedded.doc"),
         "embedded-executable", "calc.exe"),
    ]


CASES = _cases()


@pytest.mark.parametrize("name,data,code,words", CASES,
                         ids=[f"{c[2]}:{c[0].encode('unicode_escape').decode()[:40]}"
                              for c in CASES])
def test_disguise_is_malicious(scanner, tmp_path, name, data, code, words):
    path = tmp_path / name
    path.write_bytes(data)
    v = scanner.scan_file(path)
    assert v.error is None
    assert v.level is Level.MALICIOUS, [r.to_dict() for r in v.reasons]
    assert code in v.codes, v.codes
    reason = next(r for r in v.reasons if r.code == code)
    assert reason.severity is Level.MALICIOUS
    assert words in reason.message, reason.message


def test_enough_cases_cover_every_disguise_code():
    codes = {c[2] for c in CASES}
    assert len(CASES) >= 15
    assert codes >= {"type-mismatch", "double-extension", "bidi-override", "padded-name",
                     "lure-name", "exec-in-container", "embedded-executable"}


def test_employee_sentence_names_file_and_truth(scanner, tmp_path):
    path = tmp_path / "Contract.pdf"
    path.write_bytes(b.pe32())
    assert scanner.scan_file(path).summary == "'Contract.pdf' is a Windows program, not a PDF."


@pytest.mark.parametrize("name,data,code", [
    ("tools.zip", lambda: b.zip_of({"setup.exe": b.pe32()}), "exec-in-container"),
    ("installer.iso", lambda: b.iso_of({"setup.exe": b.pe32()}), "exec-in-container"),
    ("budget.xlsm", b.xlsm_with_macrosheet, "macro-document"),
    ("form.pdf", lambda: b.pdf_with(PDF_JS),
     "pdf-active-content"),
    ("form2.pdf", lambda: b.pdf_with("/OpenAction << /S /J#61vaScript /JS (x) >>"),
     "pdf-active-content"),
    ("run.pdf", lambda: b.pdf_with("/OpenAction << /S /Launch /F (cmd.exe) >>"),
     "pdf-active-content"),
    ("Agreement.lnk", b.lnk, "lnk-command"),
    ("install.sh", lambda: b"#!/bin/sh\necho hello\n", "executable"),
    ("tool", lambda: b"#!/usr/bin/env python3\nprint('hi')\n", "executable"),
])
def test_honest_active_content_is_suspicious(scanner, tmp_path, name, data, code):
    path = tmp_path / name
    path.write_bytes(data())
    v = scanner.scan_file(path)
    assert v.level is Level.SUSPICIOUS, [r.to_dict() for r in v.reasons]
    assert code in v.codes


def test_lnk_command_names_the_runner(scanner, tmp_path):
    path = tmp_path / "Agreement.lnk"
    path.write_bytes(b.lnk())
    v = scanner.scan_file(path)
    reason = next(r for r in v.reasons if r.code == "lnk-command")
    assert "powershell" in reason.message
    assert v.details["shortcut"]["arguments"].startswith("-NoProfile")


def test_pdf_attachment_that_is_a_document_stays_clean(scanner, tmp_path):
    # e-invoices (ZUGFeRD, Factur-X) carry XML attachments: not active content
    path = tmp_path / "invoice.pdf"
    path.write_bytes(b.pdf_with_attachment("factur-x.xml", b"<?xml version='1.0'?><x/>"))
    v = scanner.scan_file(path)
    assert v.level is Level.CLEAN, [r.to_dict() for r in v.reasons]


def test_archive_of_documents_is_clean(scanner, tmp_path):
    path = tmp_path / "docs.zip"
    path.write_bytes(b.zip_of({"a.pdf": b.corpus_bytes("benign/pdf/pdf.pdf"),
                               "b/notes.txt": b"hello", "c.docx": b.corpus_bytes(
                                   "benign/docx/harmless-clean.docx")}))
    v = scanner.scan_file(path)
    assert v.level is Level.CLEAN, [r.to_dict() for r in v.reasons]
    assert v.details["container"]["members"] > 3   # walked into the nested docx too
