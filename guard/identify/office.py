"""Macros in Office files: VBA (oletools' olevba) and Excel 4.0 macro sheets."""

from __future__ import annotations

import io
import logging
import warnings
import zipfile
from dataclasses import dataclass


OLE_MAGIC = bytes.fromhex("d0cf11e0a1b11ae1")


@dataclass(frozen=True)
class MacroFacts:
    vba: bool = False
    xlm: bool = False
    error: str = ""
    over_limit: str = ""      # why the macros were not looked for: a part too big to read

    @property
    def any(self) -> bool:
        return self.vba or self.xlm


def _ooxml_over_limit(zf: zipfile.ZipFile, max_ole_bytes: int) -> str:
    """olevba reads every part of an OOXML file that starts like an OLE file, whole and
    without a limit: a vbaProject.bin that inflates to GiBs would take the memory with it.
    Their declared sizes (which zipfile never reads past) must fit in *max_ole_bytes*, and
    each must pass ``_ole_over_limit`` as a file of its own."""
    total = 0
    for info in zf.infolist():
        try:
            with zf.open(info) as fh:
                if fh.read(len(OLE_MAGIC)) != OLE_MAGIC:
                    continue
        except Exception:  # noqa: BLE001 - unreadable parts are olevba's to report
            continue
        total += info.file_size
        if total > max_ole_bytes:
            return (f"OLE parts of {total} bytes or more (limit {max_ole_bytes}), "
                    f"'{info.filename[:100]}' among them")
        try:
            with zf.open(info) as fh:
                part = fh.read()               # at most its declared size, checked above
        except Exception:  # noqa: BLE001 - unreadable parts are olevba's to report
            continue
        problem = _ole_over_limit(part)
        if problem:
            return f"'{info.filename[:100]}': {problem}"
    return ""


def _ole_over_limit(data: bytes) -> str:
    """An OLE file whose streams olefile would read past the file's own size (see
    ``containers.ole_size_problem``); olevba would be given it otherwise. "" when fine or
    when olefile cannot open it at all (olevba then reports that itself)."""
    import olefile

    from .containers import ole_size_problem
    try:
        with olefile.OleFileIO(io.BytesIO(data)) as ole:
            return ole_size_problem(ole, len(data))
    except Exception:  # noqa: BLE001 - not openable: olevba's error to report
        return ""


def inspect_macros(data: bytes, kind: str, name: str = "", max_parts: int = 10_000,
                   max_ole_bytes: int = 64 << 20) -> MacroFacts:
    """Macro facts for an OLE or OOXML file. Never raises: parse errors go in ``error``.

    Limits: an OOXML file with more than *max_parts* parts, or whose OLE-looking parts
    declare more than *max_ole_bytes*, and an OLE file whose streams declare more bytes
    than the file holds, are not given to olevba (``over_limit`` says why).
    """
    xlm = False
    if kind == "ooxml":
        from .containers import zip_directory
        listing = zip_directory(data, max_parts)
        if listing is not None and len(listing) > max_parts:
            return MacroFacts(over_limit=f"more than {max_parts} parts")
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                names = [n.lower() for n in zf.namelist()]
                xlm = any(n.startswith("xl/macrosheets/") for n in names)
                if not any(n.endswith("vbaproject.bin") for n in names):
                    return MacroFacts(vba=False, xlm=xlm)
                too_big = _ooxml_over_limit(zf, max_ole_bytes)
                if too_big:
                    return MacroFacts(xlm=xlm, over_limit=too_big)
        except Exception as exc:  # noqa: BLE001 - zipfile raises NotImplementedError too
            return MacroFacts(xlm=xlm, error=f"{type(exc).__name__}: {exc}"[:200])
    if kind == "ole":
        too_big = _ole_over_limit(data)
        if too_big:
            return MacroFacts(over_limit=too_big)
    try:
        with warnings.catch_warnings():   # oletools' pyparsing grammar warns on import
            warnings.simplefilter("ignore")
            from oletools import olevba
        logging.getLogger("olevba").setLevel(logging.CRITICAL)
        parser = olevba.VBA_Parser(name or "file", data=data)
        try:
            vba = bool(parser.detect_vba_macros())
            if kind == "ole" and not xlm:
                xlm = bool(parser.detect_xlm_macros())
        finally:
            parser.close()
    except Exception as exc:  # olevba raises many kinds on malformed input
        return MacroFacts(xlm=xlm, error=f"{type(exc).__name__}: {exc}"[:200])
    return MacroFacts(vba=vba, xlm=xlm)
