"""Macros in Office files: VBA (oletools' olevba) and Excel 4.0 macro sheets."""

from __future__ import annotations

import io
import logging
import warnings
import zipfile
from dataclasses import dataclass


@dataclass(frozen=True)
class MacroFacts:
    vba: bool = False
    xlm: bool = False
    error: str = ""

    @property
    def any(self) -> bool:
        return self.vba or self.xlm


def inspect_macros(data: bytes, kind: str, name: str = "") -> MacroFacts:
    """Macro facts for an OLE or OOXML file. Never raises: parse errors go in ``error``."""
    xlm = False
    if kind == "ooxml":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                names = [n.lower() for n in zf.namelist()]
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            return MacroFacts(error=f"{type(exc).__name__}: {exc}")
        xlm = any(n.startswith("xl/macrosheets/") for n in names)
        if not any(n.endswith("vbaproject.bin") for n in names):
            return MacroFacts(vba=False, xlm=xlm)
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
