"""Who signed a file: real Authenticode signatures made in the test (osslsigncode and a
throwaway CA), hand-built Mach-O code signatures, the corpus, and malformed input."""

from __future__ import annotations

import datetime as dt
import shutil
import struct
import subprocess
from pathlib import Path

import pefile
import pytest

from builders import EXE
from guard.identify.signer import SignerInfo, signers_of

PUBLISHER = "Guard Test Publisher"
ORG = "Guard Test Tools Ltd"
TEAM = "ABCDE12345"

needs_osslsigncode = pytest.mark.skipif(
    shutil.which("osslsigncode") is None,
    reason="osslsigncode is not installed (Debian: apt-get install osslsigncode); it makes "
           "the signed test programs")


# --- a test PKI and signed programs -----------------------------------------------------

def _key():
    from cryptography.hazmat.primitives.asymmetric import rsa
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(cn: str, org: str | None = None):
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _usage(**on):
    from cryptography import x509
    flags = dict(digital_signature=False, content_commitment=False, key_encipherment=False,
                 data_encipherment=False, key_agreement=False, key_cert_sign=False,
                 crl_sign=False, encipher_only=False, decipher_only=False)
    flags.update(on)
    return x509.KeyUsage(**flags)


def _ca(cn: str):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    key = _key()
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_usage(key_cert_sign=True, crl_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def _leaf(ca, ca_key, eku):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    key = _key()
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(PUBLISHER, ORG))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=90))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def _pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return cert.public_bytes(serialization.Encoding.PEM)


def _sign(src: Path, out: Path, cert, key, folder: Path) -> bytes:
    from cryptography.hazmat.primitives import serialization
    cert_file, key_file = folder / f"{out.stem}.crt", folder / f"{out.stem}.key"
    cert_file.write_bytes(_pem(cert))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    r = subprocess.run(["osslsigncode", "sign", "-certs", str(cert_file), "-key", str(key_file),
                        "-h", "sha256", "-n", "guard test", "-in", str(src), "-out", str(out)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return out.read_bytes()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A root CA, a code-signing leaf, a TLS-only leaf, and programs signed by each."""
    if shutil.which("osslsigncode") is None:
        pytest.skip("osslsigncode is not installed (Debian: apt-get install osslsigncode)")
    from cryptography.x509.oid import ExtendedKeyUsageOID
    folder = tmp_path_factory.mktemp("pki")
    ca, ca_key = _ca("Guard Test Root CA")
    other_ca, _ = _ca("Some Other Root CA")
    code, code_key = _leaf(ca, ca_key, ExtendedKeyUsageOID.CODE_SIGNING)
    tls, tls_key = _leaf(ca, ca_key, ExtendedKeyUsageOID.SERVER_AUTH)
    signed = {name: _sign(EXE / "pe" / name, folder / f"signed-{name}", code, code_key, folder)
              for name in ("pe32.exe", "cli-64.exe")}
    tls_signed = _sign(EXE / "pe" / "pe32.exe", folder / "tls-pe32.exe", tls, tls_key, folder)
    return {"root": _pem(ca), "other_root": _pem(other_ca), "signed": signed,
            "tls_signed": tls_signed}


# --- Authenticode -----------------------------------------------------------------------

@needs_osslsigncode
@pytest.mark.parametrize("name", ["pe32.exe", "cli-64.exe"])
def test_verified_publisher_with_the_test_root(pki, name):
    info = signers_of(pki["signed"][name], "pe", extra_roots_pem=pki["root"])
    assert info == SignerInfo((PUBLISHER, ORG), True, "", (), "authenticode")


@needs_osslsigncode
def test_extra_roots_may_hold_several_certificates(pki):
    both = pki["other_root"] + pki["root"]
    assert signers_of(pki["signed"]["pe32.exe"], "pe", both).verified


@needs_osslsigncode
@pytest.mark.parametrize("roots", [None, "other_root"])
def test_not_verified_without_a_trusted_root(pki, roots):
    extra = pki[roots] if roots else None
    info = signers_of(pki["signed"]["pe32.exe"], "pe", extra)
    assert info.names == () and not info.verified
    assert info.claimed == (PUBLISHER, ORG)            # for messages only
    assert "does not verify" in info.error and "Guard Test Root CA" in info.error


@needs_osslsigncode
def test_a_byte_flipped_in_the_code_is_not_verified(pki):
    data = bytearray(pki["signed"]["cli-64.exe"])
    pe = pefile.PE(data=bytes(data), fast_load=True)
    text = next(s for s in pe.sections if s.Characteristics & 0x20000000)   # executable
    at = text.PointerToRawData + text.SizeOfRawData // 2
    data[at] ^= 0xFF
    info = signers_of(bytes(data), "pe", pki["root"])
    assert not info.verified and info.names == ()
    assert "hash" in info.error.lower() or "digest" in info.error.lower()


@needs_osslsigncode
def test_a_tls_certificate_cannot_sign_code(pki):
    info = signers_of(pki["tls_signed"], "pe", pki["root"])
    assert not info.verified and info.names == ()


@needs_osslsigncode
def test_truncated_and_corrupted_signatures_never_raise(pki):
    data = pki["signed"]["pe32.exe"]
    for cut in range(0, len(data), max(1, len(data) // 97)):
        info = signers_of(data[:cut], "pe", pki["root"])
        assert isinstance(info, SignerInfo) and not info.verified
    tail = bytearray(data)
    for i in range(len(tail) - 1500, len(tail), 37):     # inside the certificate table
        bad = bytearray(tail)
        bad[i] ^= 0x55
        info = signers_of(bytes(bad), "pe", pki["root"])
        assert isinstance(info, SignerInfo)
        assert not info.verified or info.names == (PUBLISHER, ORG)


@pytest.mark.parametrize("pe", sorted(p.name for p in (EXE / "pe").iterdir()))
def test_unsigned_corpus_programs_have_no_signer(pe):
    info = signers_of((EXE / "pe" / pe).read_bytes(), "pe")
    assert info == SignerInfo(error="not signed")


def test_bad_extra_roots_are_an_error_not_an_exception():
    data = (EXE / "pe" / "pe32.exe").read_bytes()
    info = signers_of(data, "pe", b"not a certificate")
    assert not info.verified and "trusted roots" in info.error


# --- Mach-O -----------------------------------------------------------------------------

def code_directory(team: str | None, version: int = 0x20400, flags: int = 0) -> bytes:
    """A CodeDirectory blob (big-endian) with an identifier and, from 0x20200, a team."""
    ident = b"com.example.tool\0"
    header_len = 88
    ident_off = header_len
    team_bytes = team.encode() + b"\0" if team else b""
    team_off = ident_off + len(ident) if team else 0
    hash_off = ident_off + len(ident) + len(team_bytes)
    length = hash_off + 32
    blob = struct.pack(">IIIIIIIIIBBBBIIIQQQ", 0xFADE0C02, length, version, flags, hash_off,
                       ident_off, 0, 1, 0x1000, 32, 2, 0, 12, 0, 0, team_off, 0, 0, 0)
    blob = blob.ljust(header_len, b"\0") + ident + team_bytes + b"\x11" * 32
    assert len(blob) == length
    return blob


def super_blob(*blobs: tuple[int, bytes]) -> bytes:
    index = b""
    body = b""
    offset = 12 + 8 * len(blobs)
    for slot, blob in blobs:
        index += struct.pack(">II", slot, offset + len(body))
        body += blob
    total = 12 + len(index) + len(body)
    return struct.pack(">III", 0xFADE0CC0, total, len(blobs)) + index + body


def thin_macho(signature: bytes | None, big_endian: bool = False) -> bytes:
    """A 64-bit Mach-O: header, LC_SEGMENT_64 stub, LC_CODE_SIGNATURE, signature."""
    e = ">" if big_endian else "<"
    magic = b"\xfe\xed\xfa\xcf" if big_endian else b"\xcf\xfa\xed\xfe"
    segment = struct.pack(e + "II16sQQQQiiII", 0x19, 72, b"__LINKEDIT", 0, 0, 0, 0, 7, 1, 0, 0)
    cmds = [segment]
    sig_at = 0x1000
    if signature is not None:
        cmds.append(struct.pack(e + "IIII", 0x1D, 16, sig_at, len(signature)))
    body = b"".join(cmds)
    header = magic + struct.pack(e + "iiIIIII", 0x0100000C, 0, 2, len(cmds), len(body), 0, 0)
    out = (header + body).ljust(sig_at, b"\0")
    return out + (signature or b"")


def fat(*slices: bytes) -> bytes:
    out = struct.pack(">II", 0xCAFEBABE, len(slices))
    offset = 0x4000
    table, body = b"", b""
    for s in slices:
        table += struct.pack(">IIIII", 0x0100000C, 0, offset + len(body), len(s), 14)
        body += s.ljust(0x4000, b"\0")
    return (out + table).ljust(offset, b"\0") + body


def test_team_id_from_a_thin_macho_is_returned_unverified():
    data = thin_macho(super_blob((0, code_directory(TEAM))))
    info = signers_of(data, "macho")
    assert info.names == (TEAM,) and not info.verified and info.scheme == "team-id"
    assert "not verified" in info.error


def test_team_id_from_big_endian_and_fat_binaries():
    sig = super_blob((2, b"\xfa\xde\x0c\x01" + b"\0" * 8), (0, code_directory(TEAM)))
    assert signers_of(thin_macho(sig, big_endian=True), "macho").names == (TEAM,)
    other = thin_macho(super_blob((0, code_directory("ZZZZZ99999"))))
    assert signers_of(fat(thin_macho(sig), other), "macho-fat").names == (TEAM,)  # first slice
    assert signers_of(fat(thin_macho(sig)), "").names == (TEAM,)                   # sniffed


def test_team_id_in_an_alternate_code_directory():
    sig = super_blob((0, code_directory(None, version=0x20100)),
                     (0x1000, code_directory(TEAM)))
    assert signers_of(thin_macho(sig), "macho").names == (TEAM,)


@pytest.mark.parametrize("data,why", [
    (thin_macho(None), "not signed"),
    (thin_macho(super_blob((0, code_directory(None, flags=0x2)))), "ad-hoc"),
    (thin_macho(super_blob((0, code_directory(TEAM, version=0x20100)))), "no team id"),
    (thin_macho(super_blob((0, code_directory("bad team!"))))[:], "malformed team id"),
    (thin_macho(b"\xfa\xde\x0c\xc1" + b"\0" * 20), "unknown code signature"),
])
def test_macho_without_a_usable_team_id(data, why):
    info = signers_of(data, "macho")
    assert info.names == () and not info.verified and why in info.error


@pytest.mark.parametrize("name", ["_psutil_osx.abi3.so", "_psutil_posix.abi3.so"])
def test_corpus_macho_files_are_ad_hoc_without_team_id(name):
    # both are linker-signed ad hoc (CodeDirectory 0x20400, flags 0x20002, teamOffset 0)
    info = signers_of((EXE / "macho" / name).read_bytes(), "macho")
    assert info.names == () and not info.verified and "ad-hoc" in info.error


def test_malformed_macho_never_raises():
    good = thin_macho(super_blob((0, code_directory(TEAM))))
    for cut in range(0, len(good) + 1, 7):
        assert isinstance(signers_of(good[:cut], "macho"), SignerInfo)
    for at in list(range(0, 120)) + list(range(0x1000, len(good))):
        bad = bytearray(good)
        bad[at] ^= 0xFF
        info = signers_of(bytes(bad), "macho")
        assert isinstance(info, SignerInfo)
        assert info.names in ((), (TEAM,)) or info.scheme == "team-id"
    for junk in (b"", b"\xca\xfe\xba\xbe", b"\xca\xfe\xba\xbe\0\0\0\x01" + b"\xff" * 20,
                 b"\xca\xfe\xba\xbf\0\0\0\x01" + b"\0" * 32, b"\xcf\xfa\xed\xfe" + b"\xff" * 28):
        assert isinstance(signers_of(junk, "macho-fat"), SignerInfo)


def test_other_kinds_have_no_signature_format():
    info = signers_of((EXE / "elf" / "elf64.elf").read_bytes(), "elf")
    assert info == SignerInfo(error="no code signature format for elf")
