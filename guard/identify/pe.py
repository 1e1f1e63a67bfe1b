"""PE details for the SOC, via pefile: kind, signature, overlay, packed-looking sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pefile

HIGH_ENTROPY = 7.2          # bits per byte; packed or encrypted sections sit above
_MIN_SECTION_BYTES = 1024   # tiny sections give meaningless entropy
_SUBSYSTEMS = {1: "native", 2: "gui", 3: "console", 9: "windows-ce", 10: "efi-application",
               11: "efi-boot-driver", 12: "efi-runtime-driver", 16: "windows-boot"}


@dataclass(frozen=True)
class PeFacts:
    kind: str                      # exe, dll, driver, efi
    machine: str
    subsystem: str
    dotnet: bool
    signed: bool                   # an Authenticode signature directory is present
    overlay_bytes: int
    high_entropy_sections: tuple[str, ...]
    sections: tuple[dict[str, Any], ...] = field(default=(), compare=False)
    timestamp: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "machine": self.machine, "subsystem": self.subsystem,
                "dotnet": self.dotnet, "signed": self.signed,
                "overlay_bytes": self.overlay_bytes,
                "high_entropy_sections": list(self.high_entropy_sections),
                "sections": list(self.sections), "timestamp": self.timestamp}


def inspect_pe(data: bytes) -> PeFacts:
    """Parse headers only (fast_load). Raises ``pefile.PEFormatError`` when malformed, and
    only that: pefile lets other exceptions out on some damaged files (an AttributeError
    for a section named PAGE whose import directory points into the headers), and the
    scanner must judge such a file, not fail on it."""
    # Not closed: close() only unmaps files and then runs a full gc.collect() (~10 ms);
    # built from bytes there is nothing to unmap. But the PE object sits in a reference
    # cycle holding the file's bytes until the cycle collector runs: break it ourselves.
    pe = None
    try:
        pe = pefile.PE(data=data, fast_load=True)
        return _facts(pe, data)
    except (pefile.PEFormatError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - pefile's own bugs on damaged input
        raise pefile.PEFormatError(f"{type(exc).__name__}: {exc}"[:200]) from exc
    finally:
        if pe is not None:
            pe.__dict__.clear()


def _facts(pe: pefile.PE, data: bytes) -> PeFacts:
    fh, oh = pe.FILE_HEADER, pe.OPTIONAL_HEADER
    dirs = oh.DATA_DIRECTORY
    security = dirs[pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_SECURITY"]] \
        if len(dirs) > 4 else None
    com = dirs[pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_COM_DESCRIPTOR"]] \
        if len(dirs) > 14 else None
    subsystem = _SUBSYSTEMS.get(oh.Subsystem, str(oh.Subsystem))
    if subsystem.startswith("efi"):
        kind = "efi"
    elif subsystem == "native" or fh.Characteristics & 0x1000:   # IMAGE_FILE_SYSTEM
        kind = "driver"
    elif fh.Characteristics & 0x2000:                            # IMAGE_FILE_DLL
        kind = "dll"
    else:
        kind = "exe"
    sections = []
    high = []
    for s in pe.sections:
        name = s.Name.rstrip(b"\0").decode("latin-1", "replace")
        entropy = round(s.get_entropy(), 3)
        sections.append({"name": name, "raw_size": s.SizeOfRawData,
                         "virtual_size": s.Misc_VirtualSize, "entropy": entropy})
        if entropy > HIGH_ENTROPY and s.SizeOfRawData >= _MIN_SECTION_BYTES:
            high.append(name)
    overlay_at = pe.get_overlay_data_start_offset()
    overlay = len(data) - overlay_at if overlay_at is not None else 0
    signed = bool(security is not None and security.Size and security.VirtualAddress
                  and security.VirtualAddress < len(data))
    return PeFacts(
        kind=kind,
        machine=pefile.MACHINE_TYPE.get(fh.Machine, hex(fh.Machine)).replace(
            "IMAGE_FILE_MACHINE_", "").lower(),
        subsystem=subsystem,
        dotnet=bool(com is not None and com.VirtualAddress and com.Size),
        signed=signed,
        overlay_bytes=max(0, overlay),
        high_entropy_sections=tuple(high),
        sections=tuple(sections),
        timestamp=fh.TimeDateStamp,
    )
