"""Signed allowlist distribution: one signed bundle at one URL, pulled by every agent.

An admin signs the allowlist on a trusted machine (``guard allow sign --key FILE``) and
publishes the bundle on any web server. Each agent's ``AllowlistPuller`` fetches it,
checks the Ed25519 signature against the trusted public keys and the version against
the last one applied, and only then replaces its allowlist file; the agent's
``AllowlistStore`` hot reload picks the new file up. The puller sits beside the
allowlist it writes, in ``policy/``: it feeds the policy's input, it never decides.

The bundle is UTF-8 JSON, one object with exactly these fields::

    {"format": "guard-allowlist/1", "version": 1767225600,
     "signed_at": "2026-01-01T00:00:00Z", "key_id": "3f2a9c0d1b7e4a55",
     "allowlist": "<the TOML text>", "signature": "<base64 Ed25519 signature>"}

- ``key_id``: the first 16 hex digits of the sha256 of the raw 32-byte public key.
- ``signature`` signs ``signing_input(bundle)``: the UTF-8 JSON of every other field,
  keys sorted, separators ``(",", ":")``, ``ensure_ascii=True``; in Python
  ``json.dumps({k: v for k, v in bundle.items() if k != "signature"}, sort_keys=True,
  separators=(",", ":"), ensure_ascii=True).encode()``. The allowlist text is valid
  UTF-8, so the signed string holds the exact allowlist bytes.
- ``version``: an integer from 1 to 2**63-1; ``guard allow sign`` uses the Unix time,
  or one more than the bundle it replaces when that is larger.

Limits, what this does and does not protect:

- The signature is what makes a bundle safe, not the transport: a hostile server,
  proxy or DNS can withhold bundles or replay old ones, never forge one. HTTPS is still
  recommended (privacy of the list, and fewer stale-cache surprises).
- The signing key must be kept offline (or in a vault), off the web server: whoever
  holds it decides what runs on every laptop. Rotate by adding the new public key to
  the agents first, then signing with the new key, then removing the old key.
- The public key files are the root of trust on the agent: root-owned, not writable by
  group or others (the same rule as the allowlist file; refused otherwise).
- The version counter is per agent and per key set, kept in ``state_dir``: an agent
  applies a bundle only if its version is higher than the one it applied last, which
  blocks rollback to an older signed list. Deleting the state file resets that
  protection on that agent. All keys share one counter: sign with higher versions
  after a rotation.
- No freshness guarantee: an attacker in the path can keep serving the last bundle
  (or nothing) so an agent misses an update; ``status()["last_success_at"]`` shows how
  old the last good pull is.
- While pulling is on, the pulled list owns the allowlist file: a local edit (``guard
  allow add``) lasts until the next version is applied.
- The total deadline covers connecting, TLS, headers and body, but not the name lookup
  (``getaddrinfo`` cannot be interrupted); use a resolvable host or an IP.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as _dt
import enum
import hashlib
import http.client
import json
import os
import random
import re
import socket
import ssl
import stat
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..errors import GuardError
from .allowlist import MAX_BYTES as MAX_ALLOWLIST_BYTES
from .allowlist import NEW_DIR_MODE, AllowlistError, parse_allowlist

FORMAT = "guard-allowlist/1"
FIELDS = ("format", "version", "signed_at", "key_id", "allowlist", "signature")
MAX_VERSION = 2 ** 63 - 1
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
DEST_MODE = 0o644
STATE_FILE = "allowlist.version"
EVENT = "allowlist-pull"
_KEY_FILE_MAX_BYTES = 64 * 1024
_READ_CHUNK = 64 * 1024
_ED25519_RAW = 32
_SIG_BYTES = 64
_BASE64 = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")

OnEvent = Callable[[str, dict[str, Any]], None]


class DistributionError(GuardError):
    """A bundle, key or pull refused: one line with the cause (URL or path first)."""


class FetchStopped(DistributionError):
    """The fetch was cut short on purpose (``AllowlistPuller.stop()``): not a failure."""


@dataclass(frozen=True)
class SignedAllowlist:
    """A verified bundle: *text* is the allowlist bytes exactly as signed, and it loads."""

    version: int
    text: bytes
    key_id: str
    signed_at: str
    entries: int = 0

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text).hexdigest()


class PullOutcome(enum.Enum):
    APPLIED = "applied"        # a newer verified list is now in the allowlist file
    UNCHANGED = "unchanged"    # 304, or the version already applied
    REJECTED = "rejected"      # a bundle came, and was refused: nothing written
    FAILED = "failed"          # no bundle: network, HTTP status, size, deadline, stop


@dataclass(frozen=True)
class PullResult:
    outcome: PullOutcome
    message: str                       # one line
    version: int | None = None         # the bundle's version, when it could be read
    applied_version: int | None = None  # in force after this pull

    @property
    def ok(self) -> bool:
        return self.outcome in (PullOutcome.APPLIED, PullOutcome.UNCHANGED)


# --- keys -------------------------------------------------------------------------------

def generate_keypair() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair as (private PKCS#8 PEM, unencrypted; public SPKI PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    return private_pem, public_pem_of(key.public_key())


def public_pem_of(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id_of(public_key: Any) -> str:
    """First 16 hex digits of the sha256 of the raw 32-byte Ed25519 public key."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_private_key(path: Path | str, password: bytes | None = None) -> Any:
    """The Ed25519 private key in the PEM file *path*.

    Refuses a file readable by group or others (like ssh does) and any other key type.
    Raises DistributionError (with the path).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    src = str(path)
    data, st = _read_small_file(Path(path), _KEY_FILE_MAX_BYTES)
    if b"PUBLIC KEY-----" in data:
        raise DistributionError("this is a public key: sign with the private key", src)
    if hasattr(os, "geteuid") and st.st_mode & 0o077:
        raise DistributionError(f"private key readable by group or others (mode "
                                f"{stat.S_IMODE(st.st_mode):04o}): `chmod 600` it", src)
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except TypeError:
        raise DistributionError("the private key is encrypted: decrypt it to a file only "
                                "root can read, or pass the password", src) from None
    except ValueError as exc:
        raise DistributionError(f"not a PEM private key ({_first_line(exc)})", src) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise DistributionError(f"not an Ed25519 key ({type(key).__name__}): make one with "
                                "`guard allow keygen`", src)
    return key


def load_public_keys(items: Iterable[Path | str | bytes]) -> list[Any]:
    """Trusted Ed25519 public keys, for ``verify_bundle`` and ``AllowlistPuller``.

    Each item is a file path (one or more PEM public keys in it; root-owned or ours,
    not writable by group or others), PEM text, or the base64 of the raw 32-byte key or
    of its DER. Several keys allow rotation; duplicates count once. Raises
    DistributionError for an unreadable or unsafe file, a value that is not an Ed25519
    public key, and an empty list.
    """
    keys: dict[str, Any] = {}
    for item in items:
        for key in _public_keys_from(item):
            keys.setdefault(key_id_of(key), key)
    if not keys:
        raise DistributionError("no trusted public key: name at least one public key file")
    return list(keys.values())


def _public_keys_from(item: Path | str | bytes) -> list[Any]:
    if isinstance(item, bytes):
        return _parse_public(item, "<public key>")
    if isinstance(item, str):
        text = item.strip()
        if "-----BEGIN" in text:
            return _parse_public(text.encode("ascii", "replace"), "<public key>")
        if not os.path.exists(text) and _BASE64.fullmatch(text):
            return _parse_public(text.encode("ascii"), "<public key>")
    path = Path(item)
    data, st = _read_small_file(path, _KEY_FILE_MAX_BYTES)
    _check_trusted_file(st, str(path))
    return _parse_public(data, str(path))


def _parse_public(data: bytes, src: str) -> list[Any]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    found: list[Any] = []
    if b"-----BEGIN" in data:
        begin = b"-----BEGIN PUBLIC KEY-----"
        end = b"-----END PUBLIC KEY-----"
        blocks = [begin + part.split(end, 1)[0] + end for part in data.split(begin)[1:]
                  if end in part]
        if not blocks:
            raise DistributionError("no PEM block 'BEGIN PUBLIC KEY' (is this the private "
                                    "key?)", src)
        for block in blocks:
            try:
                found.append(serialization.load_pem_public_key(block))
            except ValueError as exc:
                raise DistributionError(f"not a PEM public key ({_first_line(exc)})",
                                        src) from None
    else:
        try:
            raw = base64.b64decode(b"".join(data.split()), validate=True)
        except (binascii.Error, ValueError):
            raise DistributionError("not a public key: expected a PEM file or the base64 "
                                    "of an Ed25519 key", src) from None
        try:
            found.append(Ed25519PublicKey.from_public_bytes(raw) if len(raw) == _ED25519_RAW
                         else serialization.load_der_public_key(raw))
        except ValueError as exc:
            raise DistributionError(f"not a public key ({_first_line(exc)})", src) from None
    for key in found:
        if not isinstance(key, Ed25519PublicKey):
            raise DistributionError(f"not an Ed25519 public key ({type(key).__name__})", src)
    return found


def _read_small_file(path: Path, max_bytes: int) -> tuple[bytes, os.stat_result]:
    src = str(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise DistributionError(f"cannot open: {exc.strerror or exc}", src) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DistributionError("not a regular file", src)
        if st.st_size > max_bytes:
            raise DistributionError(f"larger than {max_bytes} bytes: not a key", src)
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read(max_bytes + 1), st
    except OSError as exc:
        raise DistributionError(f"cannot read: {exc.strerror or exc}", src) from None
    finally:
        os.close(fd)


def _check_trusted_file(st: os.stat_result, src: str) -> None:
    """A trust anchor may be written only by root or the user running guard."""
    if not hasattr(os, "geteuid"):
        return
    if st.st_uid not in (0, os.geteuid()):
        raise DistributionError(f"owned by uid {st.st_uid}, not by root or the user running "
                                "guard: `chown root` it", src)
    if st.st_mode & 0o022:
        raise DistributionError(f"writable by group or others (mode "
                                f"{stat.S_IMODE(st.st_mode):04o}): `chmod go-w` it", src)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# --- signing and verifying --------------------------------------------------------------

def signing_input(bundle: dict[str, Any]) -> bytes:
    """The exact bytes the signature covers: canonical JSON of all fields but
    ``signature`` (sorted keys, no spaces, ASCII only)."""
    body = {k: v for k, v in bundle.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode("ascii")


def sign_allowlist(allowlist_bytes: bytes, private_key: Any, version: int,
                   signed_at: _dt.datetime | None = None, *,
                   source: Path | str = "<allowlist>") -> bytes:
    """A signed bundle (UTF-8 JSON, newline-terminated) for *allowlist_bytes*.

    Refuses a list that ``parse_allowlist`` refuses (the message names *source* and the
    line), one larger than 4 MiB, and a version outside 1..2**63-1. *signed_at*
    defaults to now; it is informational, agents order bundles by version only.
    Raises DistributionError.
    """
    src = str(source)
    _check_version(version, src)
    if len(allowlist_bytes) > MAX_ALLOWLIST_BYTES:
        raise DistributionError("larger than 4 MiB: agents would refuse it", src)
    try:
        parse_allowlist(allowlist_bytes, source)
    except AllowlistError as exc:
        raise DistributionError(f"{exc.message}: not signed", exc.path, exc.line) from None
    when = signed_at or _dt.datetime.now(_dt.timezone.utc)
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    bundle: dict[str, Any] = {
        "format": FORMAT,
        "version": version,
        "signed_at": _iso(when),
        "key_id": key_id_of(private_key.public_key()),
        "allowlist": allowlist_bytes.decode("utf-8"),
    }
    bundle["signature"] = base64.b64encode(private_key.sign(signing_input(bundle))
                                           ).decode("ascii")
    return (json.dumps(bundle, indent=1, ensure_ascii=True) + "\n").encode("ascii")


def _check_version(version: Any, src: str) -> None:
    if isinstance(version, bool) or not isinstance(version, int) \
            or not 1 <= version <= MAX_VERSION:
        raise DistributionError(f"version must be an integer from 1 to {MAX_VERSION}, not "
                                f"{version!r}", src)


def _iso(when: _dt.datetime) -> str:
    return when.astimezone(_dt.timezone.utc).replace(microsecond=0).isoformat() \
        .replace("+00:00", "Z")


def read_bundle_version(data: bytes) -> int | None:
    """The ``version`` field of *data* WITHOUT checking anything, or None. Only a hint
    (``guard allow sign`` numbers the next bundle after it); never trust it."""
    try:
        doc = json.loads(data)
        version = doc.get("version") if isinstance(doc, dict) else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def verify_bundle(data: bytes, public_keys: Sequence[Any], *, min_version: int | None,
                  source: str = "<bundle>") -> SignedAllowlist:
    """Check a bundle and return its allowlist; nothing in it is trusted before this.

    Order: JSON, format, fields, key id among *public_keys*, signature, then (now that
    the content is authentic) version > *min_version* (None: any), then the allowlist
    itself must load. Raises DistributionError, one line that starts with *source*.
    """
    def fail(message: str) -> DistributionError:
        return DistributionError(message, source)

    if not data:
        raise fail("empty download: not a signed allowlist bundle")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise fail("not a signed allowlist bundle: not UTF-8 text (binary data or the wrong "
                   "URL?)") from None
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):
            raise fail("not a complete JSON document (truncated download?)") from None
        head = text.lstrip()[:1]
        hint = " (an HTML page: wrong URL or a proxy's error page?)" if head == "<" else ""
        raise fail(f"not a signed allowlist bundle: not JSON at line {exc.lineno}{hint}"
                   ) from None
    except (ValueError, RecursionError) as exc:
        raise fail(f"not a signed allowlist bundle: {_first_line(exc)}") from None
    if not isinstance(doc, dict):
        raise fail("not a signed allowlist bundle: a JSON object is expected")
    fmt = doc.get("format")
    if fmt != FORMAT:
        raise fail(f"unknown bundle format {str(fmt)[:40]!r}: expected {FORMAT!r} (a newer "
                   "guard signed it, or not a bundle)" if fmt is not None
                   else "not a signed allowlist bundle: no 'format' field")
    missing = [f for f in FIELDS if f not in doc]
    if missing:
        raise fail(f"bundle misses field(s) {', '.join(missing)}")
    extra = sorted(set(doc) - set(FIELDS))
    if extra:
        raise fail(f"bundle has unknown field(s) {', '.join(extra)}")
    for name in ("signed_at", "key_id", "allowlist", "signature"):
        if not isinstance(doc[name], str):
            raise fail(f"bundle field {name!r} must be a string")
    try:
        _check_version(doc["version"], source)
    except DistributionError as exc:
        raise fail(f"bundle {exc.message}") from None

    by_id = {key_id_of(k): k for k in public_keys}
    key_id = doc["key_id"]
    key = by_id.get(key_id)
    if key is None:
        trusted = ", ".join(sorted(by_id)) or "none"
        raise fail(f"signed by unknown key {key_id[:40]!r} (trusted: {trusted})")
    try:
        signature = base64.b64decode(doc["signature"], validate=True)
    except (binascii.Error, ValueError):
        raise fail("bad signature: not base64") from None
    if len(signature) != _SIG_BYTES:
        raise fail(f"bad signature: {len(signature)} bytes, an Ed25519 signature has 64")
    from cryptography.exceptions import InvalidSignature
    try:
        key.verify(signature, signing_input(doc))
    except InvalidSignature:
        raise fail(f"bad signature for key {key_id}: the bundle was changed after signing "
                   "or is corrupt") from None

    version = doc["version"]
    if min_version is not None and version <= min_version:
        raise fail(f"older or same version {version} <= {min_version}: refused")
    try:
        allowlist = doc["allowlist"].encode("utf-8")
    except UnicodeEncodeError:
        raise fail("the signed allowlist is not valid UTF-8 text") from None
    if len(allowlist) > MAX_ALLOWLIST_BYTES:
        raise fail("the signed allowlist is larger than 4 MiB: refused")
    try:
        parsed = parse_allowlist(allowlist, f"{source}[allowlist]")
    except AllowlistError as exc:
        raise DistributionError(f"{exc.message} (signed version {version} does not load "
                                "here: refused)", exc.path, exc.line) from None
    return SignedAllowlist(version, allowlist, key_id, doc["signed_at"], len(parsed.entries))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate field {k!r}")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# --- fetching ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Fetched:
    status: int                 # 200, or 304 (not modified: data is empty)
    data: bytes
    etag: str | None = None
    last_modified: str | None = None


class _Watchdog:
    """Shuts down every socket of one fetch at its deadline, or at once on ``fire()``
    (stop). A blocked recv, connect or TLS handshake then returns at once; this is what
    makes the deadline total instead of per socket operation."""

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.fired = ""                # "" | "deadline" | "stopped"
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="guard-allowlist-deadline",
                                        daemon=True)

    def __enter__(self) -> "_Watchdog":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        self._thread.join()
        with self._lock:
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.close()
            self._socks.clear()

    def attach(self, sock: socket.socket) -> None:
        # A duplicate descriptor: the original is detached when TLS wraps it, and a dup
        # cannot be reused by another file while we hold it.
        dup = sock.dup()
        with self._lock:
            self._socks.append(dup)
            fired = self.fired
        if fired:
            _shutdown(dup)

    def fire(self, why: str) -> None:
        with self._lock:
            if not self.fired:
                self.fired = why
            socks = list(self._socks)
        for s in socks:
            _shutdown(s)

    def _run(self) -> None:
        while not self._done.wait(max(0.0, self.deadline - time.monotonic())):
            if time.monotonic() >= self.deadline:
                self.fire("deadline")
                return


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _tracked(base: type, watchdog: _Watchdog) -> Callable[..., Any]:
    """An http.client connection class whose new sockets are handed to *watchdog*."""

    def make(*args: Any, **kwargs: Any) -> Any:
        conn = base(*args, **kwargs)
        create = conn._create_connection

        def create_tracked(address: Any, timeout: Any = None, *a: Any) -> socket.socket:
            remaining = watchdog.deadline - time.monotonic()
            if watchdog.fired or remaining <= 0:
                raise OSError(f"fetch {watchdog.fired or 'deadline'}")
            if not isinstance(timeout, (int, float)) or timeout > remaining:
                timeout = remaining            # connect within what is left
            sock = create(address, timeout, *a)
            watchdog.attach(sock)
            return sock

        conn._create_connection = create_tracked
        return conn
    return make


class _HTTP(urllib.request.HTTPHandler):
    def __init__(self, watchdog: _Watchdog):
        super().__init__()
        self._watchdog = watchdog

    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(_tracked(http.client.HTTPConnection, self._watchdog), req)


class _HTTPS(urllib.request.HTTPSHandler):
    def __init__(self, watchdog: _Watchdog, context: ssl.SSLContext):
        super().__init__(context=context)
        self._watchdog = watchdog
        self._context = context

    def https_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(_tracked(http.client.HTTPSConnection, self._watchdog), req,
                            context=self._context)


def check_url(url: str) -> str:
    """*url* when it is an http(s) URL with a host; DistributionError otherwise."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DistributionError("the allowlist URL must be http:// or https:// with a host",
                                url)
    return url


def fetch_bundle(url: str, *, timeout_s: float = 10.0, max_bytes: int = DEFAULT_MAX_BYTES,
                 ca_file: Path | str | None = None, etag: str | None = None,
                 last_modified: str | None = None,
                 on_watchdog: Callable[[_Watchdog | None], None] | None = None) -> Fetched:
    """GET *url* within *timeout_s* seconds in total (connect, TLS, headers and body),
    reading at most *max_bytes*. Sends If-None-Match / If-Modified-Since when given.

    Only http and https (redirects too); proxies from the environment are used.
    *ca_file*: PEM CA certificates trusted for HTTPS instead of the system ones.
    *on_watchdog* receives the fetch's watchdog (and None when done) so a stop can cut
    the fetch short. Raises DistributionError: HTTP status, size, truncation, deadline.
    """
    check_url(url)
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise DistributionError(f"cannot load the CA file: {_first_line(exc)}",
                                str(ca_file)) from None
    headers = {"User-Agent": "guard-allowlist-puller", "Accept": "application/json"}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    request = urllib.request.Request(url, headers=headers)
    with _Watchdog(time.monotonic() + timeout_s) as watchdog:
        if on_watchdog is not None:
            on_watchdog(watchdog)
        try:
            opener = urllib.request.OpenerDirector()
            for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(),
                            _HTTP(watchdog), _HTTPS(watchdog, context),
                            urllib.request.HTTPDefaultErrorHandler(),
                            urllib.request.HTTPRedirectHandler(),
                            urllib.request.HTTPErrorProcessor()):
                opener.add_handler(handler)
            return _get(opener, request, url, timeout_s, max_bytes, watchdog)
        finally:
            if on_watchdog is not None:
                on_watchdog(None)


def _get(opener: urllib.request.OpenerDirector, request: urllib.request.Request, url: str,
         timeout_s: float, max_bytes: int, watchdog: _Watchdog) -> Fetched:
    def interrupted() -> DistributionError | None:
        if watchdog.fired == "deadline":
            return DistributionError(f"timed out after {timeout_s:g} s (total deadline)", url)
        if watchdog.fired == "stopped":
            return FetchStopped("stopped before the download finished", url)
        return None

    try:
        response = opener.open(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        with contextlib.suppress(Exception):
            exc.close()
        if exc.code == 304:
            return Fetched(304, b"", exc.headers.get("ETag"), exc.headers.get("Last-Modified"))
        raise interrupted() or DistributionError(
            f"HTTP {exc.code} {str(exc.reason)[:80]}: no bundle fetched", url) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        why = _first_line(reason) if isinstance(reason, BaseException) else str(reason)
        raise interrupted() or DistributionError(f"cannot fetch: {why}", url) from None
    with response:
        expected = _content_length(response.headers.get("Content-Length"))
        if expected is not None and expected > max_bytes:
            raise DistributionError(f"bundle too large: {expected} bytes > limit {max_bytes}",
                                    url)
        body = bytearray()
        try:
            while True:
                chunk = response.read1(_READ_CHUNK)
                if not chunk:
                    break
                body += chunk
                if len(body) > max_bytes:
                    raise DistributionError(f"bundle too large: more than {max_bytes} bytes",
                                            url)
                if watchdog.fired:
                    break
        except http.client.IncompleteRead:
            raise interrupted() or DistributionError(
                f"truncated download: the connection closed after {len(body)} bytes", url
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise interrupted() or DistributionError(
                f"download failed after {len(body)} bytes: {_first_line(exc)}", url) from None
        failed = interrupted()
        if failed is not None:
            raise failed
        if expected is not None and len(body) < expected:
            raise DistributionError(f"truncated download: got {len(body)} of {expected} "
                                    "bytes", url)
        return Fetched(response.status, bytes(body), response.headers.get("ETag"),
                       response.headers.get("Last-Modified"))


def _content_length(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        n = int(value.strip())
    except ValueError:
        return None
    return n if n >= 0 else None


# --- the agent's puller -----------------------------------------------------------------

class AllowlistPuller:
    """Pulls the signed bundle at *url* every *interval_s* seconds and applies it.

    Applying: the verified allowlist text replaces *dest* atomically (temporary file
    in the same folder, fsync, mode 0644, owned by the user running guard, rename) and
    then the version is recorded in ``state_dir/allowlist.version``. Only a version
    higher than the recorded one is applied; the same version again is "unchanged".
    Anything refused leaves *dest* and the state as they were: the last good list
    stays in force. A symlink (or anything but a regular file) at *dest* is refused.

    Events: ``on_event("allowlist-pull", fields)`` with ``fields["outcome"]`` "success"
    (a version was applied: version, previous_version, key_id, signed_at, sha256,
    entries, url, dest, message) or "failure" (url, message, and version when known).
    A failure with the same message as the previous one is not reported again until a
    pull succeeds or the message changes (a broken server must not fill the audit log
    every interval); ``status()`` counts every pull. Nothing is reported for
    "unchanged" or for a fetch cut short by ``stop()``. *on_event* runs on the puller
    thread and must not block for long; its exceptions are kept in ``status()``.

    Limits: one fetch at a time; each fetch ends within *timeout_s* (name lookup
    aside, see the module docstring); ``stop()`` interrupts a fetch in progress. The
    first pull starts at once; later ones every *interval_s* +-10% (spreads a fleet).
    """

    def __init__(self, url: str, public_keys: Sequence[Any], dest: Path, state_dir: Path, *,
                 interval_s: float = 300.0, timeout_s: float = 10.0,
                 max_bytes: int = DEFAULT_MAX_BYTES, on_event: OnEvent | None = None,
                 ca_file: Path | str | None = None):
        self.url = check_url(url)
        self.public_keys = list(public_keys)
        if not self.public_keys:
            raise DistributionError("no trusted public key: pulling would refuse every "
                                    "bundle", url)
        if interval_s <= 0 or timeout_s <= 0 or max_bytes <= 0:
            raise DistributionError("interval_s, timeout_s and max_bytes must be positive",
                                    url)
        self.dest = Path(dest)
        self.state_dir = Path(state_dir)
        self.interval_s = float(interval_s)
        self.timeout_s = float(timeout_s)
        self.max_bytes = int(max_bytes)
        self.ca_file = ca_file
        self._on_event = on_event
        self._stop = threading.Event()
        self._pull_lock = threading.Lock()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._watchdog: _Watchdog | None = None
        self._etag: str | None = None
        self._last_modified: str | None = None
        self._reported = ""                      # last failure message reported
        self._status: dict[str, Any] = {
            "url": url, "dest": str(self.dest),
            "key_ids": [key_id_of(k) for k in self.public_keys],
            "applied_version": None, "last_pull_at": None, "last_success_at": None,
            "last_applied_at": None, "last_outcome": None, "last_error": None,
            "pulls": 0, "applied": 0, "rejected": 0, "failed": 0, "last_event_error": None,
        }
        with contextlib.suppress(DistributionError):
            self._status["applied_version"] = self._read_state()

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE

    # --- thread ---------------------------------------------------------------------
    def start(self) -> None:
        """Pull now, then every interval, on a daemon thread, until ``stop()``."""
        if self._thread is not None:
            raise RuntimeError("AllowlistPuller already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="guard-allowlist-pull",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> bool:
        """Stop the thread, cutting a fetch in progress short. True when it ended
        within *timeout_s*."""
        self._stop.set()
        with self._lock:
            watchdog = self._watchdog
        if watchdog is not None:
            watchdog.fire("stopped")
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout_s)
        if thread.is_alive():
            return False
        self._thread = None
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.pull_once()
            except Exception as exc:      # the thread must outlive any surprise
                with self._lock:
                    self._status["last_error"] = f"internal error: {exc!r}"
            self._stop.wait(self.interval_s * random.uniform(0.9, 1.1))

    # --- one pull -------------------------------------------------------------------
    def pull_once(self) -> PullResult:
        """Fetch, verify and apply once, synchronously. Never raises for a bad bundle
        or a network problem: the result (and an event) says what happened."""
        with self._pull_lock:
            started = _now()
            result = self._pull()
            with self._lock:
                s = self._status
                s["pulls"] += 1
                s["last_pull_at"] = started
                s["last_outcome"] = result.outcome.value
                s["applied_version"] = result.applied_version
                if result.ok:
                    s["last_success_at"] = _now()
                    s["last_error"] = None
                else:
                    s["last_error"] = result.message
                    s["rejected" if result.outcome is PullOutcome.REJECTED else "failed"] += 1
                if result.outcome is PullOutcome.APPLIED:
                    s["applied"] += 1
                    s["last_applied_at"] = _now()
            return result

    def _pull(self) -> PullResult:
        try:
            applied = self._read_state()
        except DistributionError as exc:
            return self._failure(PullOutcome.REJECTED, str(exc), None, None)
        if self._stop.is_set() and self._thread is not None:
            return PullResult(PullOutcome.FAILED, f"{self.url}: stopped", None, applied)
        try:
            fetched = fetch_bundle(self.url, timeout_s=self.timeout_s, max_bytes=self.max_bytes,
                                   ca_file=self.ca_file,
                                   etag=self._etag if applied is not None else None,
                                   last_modified=self._last_modified if applied is not None
                                   else None, on_watchdog=self._set_watchdog)
        except FetchStopped as exc:
            return PullResult(PullOutcome.FAILED, str(exc), None, applied)
        except DistributionError as exc:
            return self._failure(PullOutcome.FAILED, str(exc), None, applied)
        if fetched.status == 304:
            self._reported = ""
            return PullResult(PullOutcome.UNCHANGED, f"{self.url}: not modified (version "
                              f"{applied})", applied, applied)
        try:
            signed = verify_bundle(fetched.data, self.public_keys, min_version=None,
                                   source=self.url)
        except DistributionError as exc:
            return self._failure(PullOutcome.REJECTED, str(exc),
                                 read_bundle_version(fetched.data), applied)
        if applied is not None and signed.version <= applied:
            if signed.version == applied and self._state_sha() in (signed.sha256, None):
                self._remember(fetched)
                self._reported = ""
                return PullResult(PullOutcome.UNCHANGED, f"{self.url}: version {applied} "
                                  "already applied", signed.version, applied)
            why = (f"older or same version {signed.version} <= {applied}: refused"
                   if signed.version < applied else
                   f"older or same version {signed.version} <= {applied}: refused (a "
                   "different list under the version already applied: sign it with a "
                   "higher version)")
            return self._failure(PullOutcome.REJECTED, f"{self.url}: {why}", signed.version,
                                 applied)
        try:
            self._make_state_dir()          # before dest: the version must be recordable
            self._write_dest(signed.text)
        except DistributionError as exc:
            return self._failure(PullOutcome.FAILED, str(exc), signed.version, applied)
        try:
            self._write_state(signed)
        except DistributionError as exc:
            # dest holds the new list; a later pull applies this version again
            return self._failure(PullOutcome.FAILED, f"applied version {signed.version} but "
                                 f"could not record it: {exc}", signed.version, applied)
        self._remember(fetched)
        self._reported = ""
        message = (f"applied allowlist version {signed.version} from {self.url} "
                   f"({signed.entries} entries, key {signed.key_id}, signed {signed.signed_at})")
        self._emit({"outcome": "success", "message": message, "url": self.url,
                    "dest": str(self.dest), "version": signed.version,
                    "previous_version": applied, "key_id": signed.key_id,
                    "signed_at": signed.signed_at, "sha256": signed.sha256,
                    "entries": signed.entries})
        return PullResult(PullOutcome.APPLIED, message, signed.version, signed.version)

    def _set_watchdog(self, watchdog: _Watchdog | None) -> None:
        with self._lock:
            self._watchdog = watchdog
        if watchdog is not None and self._stop.is_set() and self._thread is not None:
            watchdog.fire("stopped")

    def _remember(self, fetched: Fetched) -> None:
        self._etag, self._last_modified = fetched.etag, fetched.last_modified

    def _failure(self, outcome: PullOutcome, message: str, version: int | None,
                 applied: int | None) -> PullResult:
        message = " ".join(message.split())          # one line, whatever the server sent
        if message != self._reported:
            self._reported = message
            fields: dict[str, Any] = {"outcome": "failure", "message": message,
                                      "url": self.url, "dest": str(self.dest),
                                      "applied_version": applied}
            if version is not None:
                fields["version"] = version
            self._emit(fields)
        return PullResult(outcome, message, version, applied)

    def _emit(self, fields: dict[str, Any]) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(EVENT, fields)
        except Exception as exc:
            with self._lock:
                self._status["last_event_error"] = f"{type(exc).__name__}: {exc}"

    def status(self) -> dict[str, Any]:
        """A copy of the counters and last results (JSON-ready), for ``guard status``."""
        with self._lock:
            out = dict(self._status)
            out["key_ids"] = list(out["key_ids"])
        out["running"] = self._thread is not None and self._thread.is_alive()
        return out

    # --- state ----------------------------------------------------------------------
    def _read_state(self) -> int | None:
        """The version applied last; None before the first. A state file that does not
        read is an error (refusing to apply beats losing rollback protection)."""
        doc = self._state_doc()
        return None if doc is None else doc["version"]

    def _state_sha(self) -> str | None:
        with contextlib.suppress(DistributionError):
            doc = self._state_doc()
            return doc.get("sha256") if doc else None
        return None

    def _state_doc(self) -> dict[str, Any] | None:
        path = self.state_file
        try:
            raw = path.read_bytes()[:4096]
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DistributionError(f"cannot read the applied version: "
                                    f"{exc.strerror or exc}", str(path)) from None
        text = raw.decode("utf-8", "replace").strip()
        try:
            doc = json.loads(text) if text.startswith("{") else {"version": int(text)}
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or isinstance(doc.get("version"), bool) \
                or not isinstance(doc.get("version"), int):
            raise DistributionError("the applied-version file does not read: fix it, or "
                                    "delete it to accept any signed version again",
                                    str(path))
        return doc

    def _write_state(self, signed: SignedAllowlist) -> None:
        doc = {"version": signed.version, "sha256": signed.sha256, "key_id": signed.key_id,
               "signed_at": signed.signed_at, "applied_at": _now(), "url": self.url}
        _write_atomic(self.state_file, (json.dumps(doc) + "\n").encode(), 0o644)

    def _make_state_dir(self) -> None:
        try:
            self.state_dir.mkdir(mode=NEW_DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise DistributionError(f"cannot create the state folder: "
                                    f"{exc.strerror or exc}", str(self.state_dir)) from None

    def _write_dest(self, data: bytes) -> None:
        dest = self.dest
        try:
            st = os.lstat(dest)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise DistributionError(f"cannot check the allowlist file: "
                                    f"{exc.strerror or exc}", str(dest)) from None
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise DistributionError("refusing to replace a symbolic link: point the "
                                    "configuration at the real file", str(dest))
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise DistributionError("not a regular file: refusing to replace it", str(dest))
        try:
            dest.parent.mkdir(mode=NEW_DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise DistributionError(f"cannot create the folder: {exc.strerror or exc}",
                                    str(dest.parent)) from None
        _write_atomic(dest, data, DEST_MODE, gid=st.st_gid if st is not None else None)


def _write_atomic(path: Path, data: bytes, mode: int, gid: int | None = None) -> None:
    """fsutil.write_atomic, its failure a DistributionError."""
    from ..fsutil import write_atomic
    try:
        write_atomic(path, data, mode=mode, gid=gid, suffix=".pull")
    except OSError as exc:
        raise DistributionError(f"cannot write: {exc.strerror or exc}", str(path)) from None

def _now() -> str:
    return _iso(_dt.datetime.now(_dt.timezone.utc))


__all__ = ["AllowlistPuller", "DistributionError", "FORMAT", "FetchStopped", "Fetched",
           "PullOutcome", "PullResult", "SignedAllowlist", "fetch_bundle", "generate_keypair",
           "key_id_of", "load_private_key", "load_public_keys", "public_pem_of",
           "read_bundle_version", "sign_allowlist", "signing_input", "verify_bundle"]
