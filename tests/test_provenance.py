"""Where a downloaded file came from: real xattrs here, real-format samples for macOS and
Windows metadata."""

from __future__ import annotations

import codecs
import os
import plistlib
import sys
import types
import uuid

import pytest

from guard.sources.provenance import (
    MAX_VALUE_BYTES,
    Provenance,
    parse_macos_quarantine,
    parse_where_froms,
    parse_xdg_xattrs,
    parse_zone_identifier,
    parse_zone_identifier_bytes,
    read_provenance,
    write_provenance_linux,
)

URL = "https://files.example.com/dl/Contract_2024.pdf.exe?token=abc"
PAGE = "https://meet.example.com/room/123"


@pytest.fixture
def xattr_file(tmp_path):
    """A regular file on a filesystem that takes user.* xattrs, else the test is skipped."""
    path = tmp_path / "download.bin"
    path.write_bytes(b"MZ")
    if not hasattr(os, "setxattr"):
        pytest.skip("no os.setxattr on this platform")
    try:
        os.setxattr(path, "user.guard.probe", b"1")
        os.removexattr(path, "user.guard.probe")
    except OSError as exc:
        pytest.skip(f"filesystem under {tmp_path} has no user xattrs: {exc}")
    return path


# --- Linux: real extended attributes ---------------------------------------------------

def test_reads_xdg_xattrs_written_like_chromium(xattr_file):
    os.setxattr(xattr_file, "user.xdg.origin.url", URL.encode())
    os.setxattr(xattr_file, "user.xdg.referrer.url", PAGE.encode())
    os.setxattr(xattr_file, "user.mime_type", b"application/pdf")  # curl's, not user.xdg.*
    prov = read_provenance(xattr_file, system="Linux")
    assert prov == Provenance(origin_url=URL, referrer_url=PAGE)
    assert prov.download_url == URL
    assert prov.to_dict() == {"origin_url": URL, "referrer_url": PAGE}


def test_hostile_xattr_values_are_capped_and_cleaned(xattr_file):
    os.setxattr(xattr_file, "user.xdg.origin.url", b"https://x.test/\x00a\r\nFAKE LOG LINE")
    os.setxattr(xattr_file, "user.xdg.comment", b"\xff\xfe not utf-8")
    prov = read_provenance(xattr_file, system="Linux")
    assert prov.origin_url == "https://x.test/aFAKE LOG LINE"
    assert prov.raw == {"user.xdg.comment": "\ufffd\ufffd not utf-8"}
    # ext4 refuses values over one block, so the length cap is shown on the parser.
    long = parse_xdg_xattrs({"user.xdg.referrer.url": b"h" * 60_000})
    assert long.referrer_url == "h" * MAX_VALUE_BYTES


def test_write_then_read_round_trip(xattr_file, tmp_path):
    original = Provenance(origin_url=URL, referrer_url=PAGE,
                          raw={"user.xdg.publisher": "Example Ltd",
                               "security.evil": "x", "user.other": "y"})
    restored = tmp_path / "restored.bin"
    restored.write_bytes(b"MZ")
    assert write_provenance_linux(restored, original) is True
    assert os.listxattr(restored) and "security.evil" not in os.listxattr(restored)
    assert read_provenance(restored, system="Linux") == Provenance(
        origin_url=URL, referrer_url=PAGE, raw={"user.xdg.publisher": "Example Ltd"})


def test_write_uses_host_url_when_there_is_no_origin(xattr_file):
    assert write_provenance_linux(xattr_file, Provenance(zone_id=3, host_url=URL))
    assert os.getxattr(xattr_file, "user.xdg.origin.url") == URL.encode()


def test_write_never_follows_a_symlink(xattr_file, tmp_path):
    link = tmp_path / "link.bin"
    os.symlink(xattr_file, link)
    assert write_provenance_linux(link, Provenance(origin_url=URL)) is False
    assert "user.xdg.origin.url" not in os.listxattr(xattr_file)


def test_read_does_not_follow_a_symlink(xattr_file, tmp_path):
    os.setxattr(xattr_file, "user.xdg.origin.url", URL.encode())
    link = tmp_path / "link.bin"
    os.symlink(xattr_file, link)
    assert read_provenance(link, system="Linux") == Provenance()


@pytest.mark.parametrize("system", ["Linux", "Darwin", "Windows", "SunOS"])
def test_missing_or_bad_paths_give_empty_provenance(tmp_path, system):
    assert read_provenance(tmp_path / "nope", system=system) == Provenance()
    assert read_provenance(str(tmp_path / "bad\x00name"), system=system) == Provenance()


def test_write_to_missing_file_is_quiet(tmp_path):
    assert write_provenance_linux(tmp_path / "nope", Provenance(origin_url=URL)) is False
    assert write_provenance_linux(str(tmp_path / "a\x00b"), Provenance(origin_url=URL)) is False
    assert write_provenance_linux(tmp_path / "nope", Provenance()) is True  # nothing to do


def test_parse_xdg_xattrs_filters_names():
    prov = parse_xdg_xattrs({"user.xdg.origin.url": URL.encode(), "trusted.x": b"y",
                             "user.xdg.bad name": b"z", "user.xdg.origin.url.x": b""})
    assert prov == Provenance(origin_url=URL)


# --- macOS: com.apple.quarantine and kMDItemWhereFroms ---------------------------------

def test_quarantine_from_safari():
    event = str(uuid.UUID(int=0x55847AA4556242A289A78FAD394B455C)).upper()
    prov = parse_macos_quarantine(f"0083;59b926ad;Safari.app;{event}".encode())
    assert prov.quarantine_agent == "Safari.app"
    assert prov.quarantine_time == 0x59B926AD == 1505306285
    assert prov.raw == {"flags": "0083", "event_id": event}


@pytest.mark.parametrize("value, agent, when, raw", [
    (b"0000;59d84776;MySoftware.app;", "MySoftware.app", 0x59D84776, {"flags": "0000"}),
    (b"0081;5f3b1c2d;sharingd", "sharingd", 0x5F3B1C2D, {"flags": "0081"}),
    (b"0083;nothex;Slack;", "Slack", None, {"flags": "0083"}),
    (b"zz;5f3b1c2d;Chrome\x00\n;id", "Chrome", 0x5F3B1C2D, {"event_id": "id"}),
    (b"", "", None, {}),
    (b"\xff\xfe\xfd", "", None, {}),
])
def test_quarantine_tolerates_odd_values(value, agent, when, raw):
    prov = parse_macos_quarantine(value)
    assert (prov.quarantine_agent, prov.quarantine_time, prov.raw) == (agent, when, raw)


def test_where_froms_binary_plist():
    value = plistlib.dumps([URL, PAGE], fmt=plistlib.FMT_BINARY)
    assert value.startswith(b"bplist00")
    assert parse_where_froms(value) == (URL, PAGE)


def test_where_froms_xml_plist_and_odd_items():
    assert parse_where_froms(plistlib.dumps([URL, PAGE], fmt=plistlib.FMT_XML)) == (URL, PAGE)
    value = plistlib.dumps([URL, 7, {"a": 1}, "", "mail\x00 subject"], fmt=plistlib.FMT_BINARY)
    assert parse_where_froms(value) == (URL, "mail subject")
    assert parse_where_froms(plistlib.dumps(URL, fmt=plistlib.FMT_BINARY)) == (URL,)
    assert parse_where_froms(plistlib.dumps({"u": URL}, fmt=plistlib.FMT_BINARY)) == ()


@pytest.mark.parametrize("value", [
    b"", b"bplist00", b"bplist00" + b"\xff" * 40, b"not a plist",
    b'<?xml version="1.0"?><!DOCTYPE plist [<!ENTITY a "aaaa">]>'
    b"<plist><array><string>&a;</string></array></plist>",
    b"bplist00" + b"\x00" * 70_000,
])
def test_where_froms_rejects_garbage_and_entities(value):
    assert parse_where_froms(value) == ()


def fake_xattr_module(values: dict[str, bytes], keyword: str) -> types.ModuleType:
    """A stand-in for the PyPI ``xattr`` (symlink=) or ``pyxattr`` (nofollow=) module."""
    def getxattr(path, name, **kwargs):
        if set(kwargs) != {keyword} or kwargs[keyword] is not True:
            raise TypeError(f"unexpected keyword arguments {kwargs}")
        if name not in values:
            raise OSError(93, "Attribute not found")
        return values[name]
    module = types.ModuleType("xattr")
    module.getxattr = getxattr  # type: ignore[attr-defined]
    return module


@pytest.mark.parametrize("keyword", ["symlink", "nofollow"])
def test_macos_reader_with_xattr_module(monkeypatch, tmp_path, keyword):
    values = {"com.apple.quarantine": b"0083;5f3b1c2d;Google Chrome;8F2E1C44-0000-4000-8000-1",
              "com.apple.metadata:kMDItemWhereFroms":
                  plistlib.dumps([URL, PAGE], fmt=plistlib.FMT_BINARY)}
    monkeypatch.setitem(sys.modules, "xattr", fake_xattr_module(values, keyword))
    prov = read_provenance(tmp_path / "Contract.pdf", system="Darwin")
    assert prov.to_dict() == {
        "origin_url": URL, "referrer_url": PAGE, "quarantine_agent": "Google Chrome",
        "quarantine_time": 0x5F3B1C2D, "where_froms": [URL, PAGE],
        "raw": {"flags": "0083", "event_id": "8F2E1C44-0000-4000-8000-1"}}


def test_macos_reader_without_xattr_module_is_empty(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "xattr", None)  # import raises ImportError
    assert read_provenance(tmp_path, system="Darwin") == Provenance()


def test_macos_reader_with_only_quarantine(monkeypatch, tmp_path):
    values = {"com.apple.quarantine": b"0081;5f3b1c2d;sharingd;"}
    monkeypatch.setitem(sys.modules, "xattr", fake_xattr_module(values, "symlink"))
    prov = read_provenance(tmp_path, system="Darwin")
    assert (prov.quarantine_agent, prov.origin_url, prov.where_froms) == ("sharingd", "", ())


# --- Windows: Zone.Identifier ----------------------------------------------------------

CHROME_ZONE = (f"[ZoneTransfer]\r\nZoneId=3\r\nReferrerUrl={PAGE}\r\nHostUrl={URL}\r\n")
EDGE_ZONE = ("[ZoneTransfer]\r\nLastWriterPackageFamilyName=Microsoft.MicrosoftEdge_8wekyb3d8bbwe"
             "\r\nZoneId=3\r\n")


def test_zone_identifier_from_chrome():
    prov = parse_zone_identifier(CHROME_ZONE)
    assert prov == Provenance(zone_id=3, referrer_url=PAGE, host_url=URL)
    assert prov.download_url == URL


def test_zone_identifier_keeps_other_keys_in_raw():
    prov = parse_zone_identifier(EDGE_ZONE)
    assert prov.zone_id == 3 and prov.host_url == ""
    assert prov.raw == {"LastWriterPackageFamilyName": "Microsoft.MicrosoftEdge_8wekyb3d8bbwe"}


@pytest.mark.parametrize("text, zone", [
    ("[zonetransfer]\nzoneid = 4\n", 4),
    ("ZoneId=0\n", 0),
    ("[ZoneTransfer]\nZoneId=three\n", None),
    ("[ZoneTransfer]\nZoneId=--1\n", None),
    ("[ZoneTransfer]\nZoneId=99999999999999999999\n", None),
    ("[Other]\nZoneId=3\n", None),
    ("[ZoneTransfer]\nZoneId=3\n[Other]\nZoneId=4\nHostUrl=x\n", 3),
    ("", None),
])
def test_zone_identifier_zone_values(text, zone):
    prov = parse_zone_identifier(text)
    assert prov.zone_id == zone and prov.host_url == ""


@pytest.mark.parametrize("encode", [
    lambda t: t.encode("ascii"),
    lambda t: codecs.BOM_UTF8 + t.encode("utf-8"),
    lambda t: t.encode("utf-16"),                        # BOM, native order
    lambda t: codecs.BOM_UTF16_BE + t.encode("utf-16-be"),
    lambda t: t.encode("utf-16-le"),                     # no BOM
    lambda t: t.encode("utf-16-be"),                     # no BOM
])
def test_zone_identifier_bytes_encodings(encode):
    prov = parse_zone_identifier_bytes(encode(CHROME_ZONE))
    assert prov == Provenance(zone_id=3, referrer_url=PAGE, host_url=URL)


def test_zone_identifier_bytes_hostile():
    data = b"[ZoneTransfer]\r\nZoneId=3\r\nHostUrl=http://a\x00b\x1b[31m\r\n" + b"A=" * 50_000
    prov = parse_zone_identifier_bytes(data)
    assert prov.zone_id == 3 and prov.host_url == "http://ab[31m"
    assert len(prov.raw) <= 32
    assert parse_zone_identifier_bytes(b"\xff\xfe\x00") == Provenance()
    assert parse_zone_identifier_bytes(b"") == Provenance()


def test_windows_reader_opens_the_stream(tmp_path):
    target = tmp_path / "Contract.pdf"
    target.write_bytes(b"%PDF")
    # On NTFS this is the alternate data stream; elsewhere it is a sibling file of that name.
    (tmp_path / "Contract.pdf:Zone.Identifier").write_bytes(CHROME_ZONE.encode("utf-16"))
    assert read_provenance(target, system="Windows").host_url == URL
    assert read_provenance(tmp_path / "other.pdf", system="Windows") == Provenance()


# --- the value type --------------------------------------------------------------------

def test_provenance_to_dict_omits_empty_and_keeps_zone_zero():
    assert Provenance().to_dict() == {} and Provenance().is_empty()
    assert Provenance(zone_id=0).to_dict() == {"zone_id": 0}
    assert Provenance(where_froms=(URL,)).download_url == URL


def test_provenance_is_hashable_and_frozen():
    prov = Provenance(origin_url=URL, raw={"flags": "0083"})
    assert hash(prov) == hash(Provenance(origin_url=URL))
    with pytest.raises(AttributeError):
        prov.origin_url = "x"  # type: ignore[misc]
