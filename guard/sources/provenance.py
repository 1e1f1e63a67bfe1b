"""Where a downloaded file came from, as the OS's own metadata records it.

Three formats, one ``Provenance``:

* Linux: extended attributes ``user.xdg.origin.url`` and ``user.xdg.referrer.url``
  (freedesktop CommonExtendedAttributes), written by Chromium-based browsers, and by
  ``wget``/``wget2``/``curl`` when run with ``--xattr``.
* macOS: ``com.apple.quarantine`` (``flags;hex-time;agent;event-uuid``) and
  ``com.apple.metadata:kMDItemWhereFroms`` (binary plist array: download URL, then the
  referring page).
* Windows: the ``Zone.Identifier`` alternate data stream, an INI text
  (``[ZoneTransfer]`` ``ZoneId=3`` ``ReferrerUrl=`` ``HostUrl=``).

Parsers are pure and run on every OS. Readers touch only the file's own metadata, never
follow symlinks where the OS lets us say so, and never raise: an unreadable, missing or
unlabelled file gives an empty ``Provenance``.

Every value is attacker-controlled (a crafted download can carry any xattr or stream), so
values are length-capped, stripped of NULs and other control characters, and only ever
treated as text: nothing is evaluated, and plists are parsed by ``plistlib``, which
refuses XML entity declarations.
"""

from __future__ import annotations

import codecs
import os
import platform
import plistlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

XDG_ORIGIN = "user.xdg.origin.url"
XDG_REFERRER = "user.xdg.referrer.url"
MAC_QUARANTINE = "com.apple.quarantine"
MAC_WHERE_FROMS = "com.apple.metadata:kMDItemWhereFroms"
ZONE_STREAM = ":Zone.Identifier"

MAX_VALUE_BYTES = 4 * 1024        # one xattr value, or one decoded text field
MAX_PLIST_BYTES = 64 * 1024       # kMDItemWhereFroms: URLs with long signed query strings
MAX_ZONE_BYTES = 64 * 1024        # the whole Zone.Identifier stream
MAX_RAW_ITEMS = 32                # extra key/value pairs kept in Provenance.raw
MAX_WHERE_FROMS = 8

_XDG_NAME = re.compile(r"user\.xdg\.[A-Za-z0-9._-]{1,64}")
_HEX = re.compile(r"[0-9A-Fa-f]{1,16}")
_ZONE = re.compile(r"[0-9]{1,5}")
# C0 and C1 controls and DEL: never part of a URL or an app name; they only serve to
# truncate strings (NUL) or forge lines in logs.
_CONTROLS = dict.fromkeys([*range(0x20), *range(0x7F, 0xA0)])


@dataclass(frozen=True)
class Provenance:
    """Where a file came from. Empty strings/None/() mean "not recorded".

    ``raw`` holds the other fields the OS recorded that have no named field here
    (quarantine flags and event id, ``LastWriterPackageFamilyName``, extra ``user.xdg.*``
    attributes). It takes no part in hashing, so a Provenance stays hashable.
    """

    origin_url: str = ""             # the file's own URL (xdg origin, first WhereFroms entry)
    referrer_url: str = ""           # the page that linked to it
    zone_id: int | None = None       # Windows security zone: 3 Internet, 4 Restricted
    host_url: str = ""               # Windows HostUrl: the download URL
    quarantine_agent: str = ""       # macOS app that saved the file ("Safari", "Slack")
    quarantine_time: int | None = None  # macOS, seconds since the Unix epoch
    where_froms: tuple[str, ...] = ()
    raw: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def download_url(self) -> str:
        """The best single answer to "downloaded from where", or ""."""
        return self.origin_url or self.host_url or next(iter(self.where_froms), "")

    def is_empty(self) -> bool:
        """True when the OS recorded nothing about the file's origin."""
        return not self.to_dict()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the recorded fields only (empty ones omitted)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value == "" or (isinstance(value, (tuple, dict)) and not value):
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else (
                dict(value) if isinstance(value, dict) else value)
        return out


def parse_xdg_xattrs(attrs: Mapping[str, bytes]) -> Provenance:
    """Provenance from Linux ``user.xdg.*`` extended attributes (name -> raw value).

    Other attribute names are ignored; values are decoded as UTF-8 and cleaned.
    """
    values: dict[str, str] = {}
    for name, data in attrs.items():
        if not _XDG_NAME.fullmatch(name) or len(values) >= MAX_RAW_ITEMS:
            continue
        text = _clean_bytes(data)
        if text:
            values[name] = text
    origin = values.pop(XDG_ORIGIN, "")
    referrer = values.pop(XDG_REFERRER, "")
    return Provenance(origin_url=origin, referrer_url=referrer, raw=values)


def parse_macos_quarantine(value: bytes) -> Provenance:
    """Provenance from ``com.apple.quarantine``: ``"0083;5f3b1c2d;Safari;8F2E...-..."``.

    Fields: flags (hex), time (hex seconds since the Unix epoch), agent (the app that
    saved the file), event UUID (a row in the QuarantineEventsV2 database; may be empty).
    The flags and UUID go to ``raw["flags"]`` / ``raw["event_id"]``; a malformed field is
    skipped on its own.
    """
    parts = _clean_bytes(value).split(";")
    raw: dict[str, str] = {}
    if _HEX.fullmatch(parts[0]):
        raw["flags"] = parts[0]
    when = int(parts[1], 16) if len(parts) > 1 and _HEX.fullmatch(parts[1]) else None
    agent = parts[2].strip() if len(parts) > 2 else ""
    if len(parts) > 3 and parts[3].strip():
        raw["event_id"] = parts[3].strip()
    return Provenance(quarantine_agent=agent, quarantine_time=when, raw=raw)


def parse_where_froms(value: bytes) -> tuple[str, ...]:
    """The URLs in ``kMDItemWhereFroms``: a plist (binary, or XML) array of strings.

    Browsers write ``[download URL, referring page]``; mail apps write sender and subject.
    Non-string items are dropped; anything that is not a plist gives ``()``.
    """
    if len(value) > MAX_PLIST_BYTES:
        return ()
    try:
        loaded = plistlib.loads(value)
    except Exception:  # noqa: BLE001 - hostile input: any parse failure means "no data"
        return ()
    items = [loaded] if isinstance(loaded, str) else loaded if isinstance(loaded, list) else []
    cleaned = (_clean_text(item) for item in items if isinstance(item, str))
    return tuple(text for text in cleaned if text)[:MAX_WHERE_FROMS]


def parse_zone_identifier(text: str) -> Provenance:
    """Provenance from a ``Zone.Identifier`` stream's text.

    Reads the ``[ZoneTransfer]`` section (keys before any section are accepted too; other
    sections are ignored). Keys are case-insensitive. ``ZoneId``, ``ReferrerUrl`` and
    ``HostUrl`` get named fields; other keys (``LastWriterPackageFamilyName``,
    ``AppZoneId``...) go to ``raw``.
    """
    section = ""
    found: dict[str, tuple[str, str]] = {}
    for line in text.lstrip("\ufeff").splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
        elif "=" in line and section in ("", "zonetransfer") and len(found) < MAX_RAW_ITEMS:
            key, _, value = line.partition("=")
            key = _clean_text(key)[:64]
            if key:
                found.setdefault(key.lower(), (key, _clean_text(value)))
    zone = found.pop("zoneid", ("", ""))[1]
    referrer = found.pop("referrerurl", ("", ""))[1]
    host = found.pop("hosturl", ("", ""))[1]
    return Provenance(zone_id=_zone_number(zone), referrer_url=referrer, host_url=host,
                      raw={key: value for key, value in found.values() if value})


def parse_zone_identifier_bytes(data: bytes) -> Provenance:
    """``parse_zone_identifier`` for the stream's bytes: UTF-8 (with or without BOM),
    UTF-16 with a BOM, or UTF-16 without one (detected from the zero bytes)."""
    data = data[:MAX_ZONE_BYTES]
    if data.startswith(codecs.BOM_UTF8):
        text = data[len(codecs.BOM_UTF8):].decode("utf-8", "replace")
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text = data.decode("utf-16", "replace")
    elif data[1:2] == b"\x00" and data[:1] != b"\x00":
        text = data.decode("utf-16-le", "replace")
    elif data[:1] == b"\x00" and data[1:2] not in (b"", b"\x00"):
        text = data.decode("utf-16-be", "replace")
    else:
        text = data.decode("utf-8", "replace")
    return parse_zone_identifier(text)


def read_provenance(path: str | os.PathLike[str], system: str | None = None) -> Provenance:
    """Read the OS's record of where *path* came from.

    Limits: reads metadata only, never the file's content; never raises for a missing or
    unreadable file (returns an empty Provenance). On macOS CPython has no
    ``os.getxattr``: the optional ``xattr`` (or ``pyxattr``) module is used when
    installed, otherwise the result is empty. Other systems than Linux, macOS and
    Windows are read like Linux (works where ``os.listxattr`` exists).

    Args:
        path: the file.
        system: ``platform.system()`` value; picks the reader.
    """
    system = platform.system() if system is None else system
    reader = _READERS.get(system, _read_linux)
    try:
        return reader(os.fsdecode(path))
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return Provenance()


def write_provenance_linux(path: str | os.PathLike[str], prov: Provenance) -> bool:
    """Put ``user.xdg.*`` attributes back on *path* (used when a quarantined file is
    restored). Best effort: never raises, never follows a symlink.

    Writes ``origin_url`` (or, failing that, ``host_url``/first WhereFroms entry) as
    ``user.xdg.origin.url``, ``referrer_url`` as ``user.xdg.referrer.url`` and any
    ``user.xdg.*`` entries of ``raw``.

    Returns:
        True when every attribute was written (or there was nothing to write).
    """
    if not hasattr(os, "setxattr"):
        return False
    items = {XDG_ORIGIN: prov.download_url, XDG_REFERRER: prov.referrer_url}
    items.update((k, v) for k, v in prov.raw.items() if _XDG_NAME.fullmatch(k)
                 and k not in items)
    try:
        target = os.fsdecode(path)
    except (TypeError, ValueError):
        return False
    ok = True
    for name, value in list(items.items())[:MAX_RAW_ITEMS]:
        text = _clean_text(value)
        if not text:
            continue
        try:
            os.setxattr(target, name, _cap_utf8(text), follow_symlinks=False)
        except (OSError, ValueError):
            ok = False
    return ok


def _read_linux(path: str) -> Provenance:
    if not hasattr(os, "listxattr"):
        return Provenance()
    attrs: dict[str, bytes] = {}
    for name in os.listxattr(path, follow_symlinks=False):
        if not _XDG_NAME.fullmatch(name) or len(attrs) >= MAX_RAW_ITEMS:
            continue
        try:
            attrs[name] = os.getxattr(path, name, follow_symlinks=False)[:MAX_VALUE_BYTES]
        except OSError:  # removed meanwhile (ENODATA), or not permitted
            continue
    return parse_xdg_xattrs(attrs)


def _read_macos(path: str) -> Provenance:
    try:
        import xattr as module  # optional; PyPI "xattr" or "pyxattr"
    except ImportError:
        return Provenance()
    quarantine = _macos_getxattr(module, path, MAC_QUARANTINE, MAX_VALUE_BYTES)
    where = _macos_getxattr(module, path, MAC_WHERE_FROMS, MAX_PLIST_BYTES)
    prov = parse_macos_quarantine(quarantine) if quarantine else Provenance()
    froms = parse_where_froms(where) if where else ()
    if not froms:
        return prov
    return replace(prov, where_froms=froms, origin_url=prov.origin_url or froms[0],
                   referrer_url=prov.referrer_url or (froms[1] if len(froms) > 1 else ""))


def _macos_getxattr(module: Any, path: str, name: str, limit: int) -> bytes:
    """One attribute without following symlinks, via either module's API; b"" if absent."""
    try:
        try:
            value = module.getxattr(path, name, symlink=True)  # PyPI "xattr"
        except TypeError:
            value = module.getxattr(path, name, nofollow=True)  # "pyxattr"
    except (OSError, AttributeError, TypeError):
        return b""
    return value[:limit] if isinstance(value, bytes) else b""


def _read_windows(path: str) -> Provenance:
    with open(path + ZONE_STREAM, "rb") as fh:
        return parse_zone_identifier_bytes(fh.read(MAX_ZONE_BYTES))


_READERS: dict[str, Callable[[str], Provenance]] = {
    "Linux": _read_linux,
    "Darwin": _read_macos,
    "Windows": _read_windows,
}


def _clean_bytes(data: bytes) -> str:
    return _clean_text(data[:MAX_VALUE_BYTES].decode("utf-8", "replace"))


def _clean_text(text: str) -> str:
    """Drop control characters (NUL included), trim, cap the length."""
    return text.translate(_CONTROLS).strip()[:MAX_VALUE_BYTES]


def _cap_utf8(text: str) -> bytes:
    """UTF-8 bytes, at most MAX_VALUE_BYTES, never cut inside a character."""
    return text.encode("utf-8")[:MAX_VALUE_BYTES].decode("utf-8", "ignore").encode("utf-8")


def _zone_number(text: str) -> int | None:
    """ZoneId 0-4 are the standard zones; 1000-10000 is the user-defined range."""
    if not _ZONE.fullmatch(text):
        return None
    number = int(text)
    return number if number <= 10000 else None
