"""Signed allowlist distribution: the bundle format, verification, and the puller against
real HTTP servers on loopback (good bundles, forged, old, truncated, garbage, slow and
silent servers), and `guard allow keygen|sign|verify` end to end."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import ipaddress
import socket
import ssl
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from guard.policy.allowlist import AllowlistStore, parse_allowlist
from guard.policy.distribution import (FORMAT, AllowlistPuller, DistributionError,
                                       PullOutcome, generate_keypair, key_id_of,
                                       load_private_key, load_public_keys, public_pem_of,
                                       sign_allowlist, signing_input, verify_bundle)

H1 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def allowlist_text(n: int) -> bytes:
    """A valid list with *n* entries (n >= 1), non-ASCII in the reason."""
    return "".join(f'[[allow]]\nsha256 = "{(f"{i:02x}" * 32)}"\nreason = "tool {i} — '
                   f'SEC-{i}"\nadded_by = "alice"\n\n' for i in range(1, n + 1)).encode()


LIST_A = allowlist_text(1)
LIST_B = allowlist_text(2)
LIST_C = allowlist_text(3)
BAD_LIST = f'[[allow]]\nsha256 = "{H1}"\nreason = "r"\nadded_by = "a"\ncolour = 1\n'.encode()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """Loopback servers are reached directly, whatever proxy the environment names."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def other_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def forge(key: Ed25519PrivateKey, allowlist: bytes, version: int, **override) -> bytes:
    """A bundle built from the documented spec alone (not with sign_allowlist), so the
    spec is what the tests check; *override* changes fields before signing."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    body = {"format": FORMAT, "version": version, "signed_at": "2026-06-01T00:00:00Z",
            "key_id": hashlib.sha256(raw).hexdigest()[:16],
            "allowlist": allowlist.decode("utf-8"), **override}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=True).encode()
    body["signature"] = base64.b64encode(key.sign(canonical)).decode()
    return json.dumps(body).encode()


# --- a loopback web server ---------------------------------------------------------------

Route = Callable[[http.server.BaseHTTPRequestHandler], None]


class Site:
    """A real HTTP server on 127.0.0.1 whose answer to each path the test sets."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.release = threading.Event()          # lets slow handlers finish at teardown
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.requests.append((self.path, dict(self.headers)))
                route = site.routes.get(self.path)
                try:
                    if route is None:
                        self.send_error(404)
                    else:
                        route(self)
                except OSError:
                    pass                            # the client went away: expected here

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str = "/allowlist.json") -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}{path}"

    def publish(self, data: bytes, path: str = "/allowlist.json", etag: bool = False) -> None:
        self.routes[path] = answer(data, etag=etag)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def answer(data: bytes, status: int = 200, ctype: str = "application/json",
           length: int | None = None, etag: bool = False) -> Route:
    tag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'

    def route(h: http.server.BaseHTTPRequestHandler) -> None:
        if etag and h.headers.get("If-None-Match") == tag:
            h.send_response(304)
            h.send_header("ETag", tag)
            h.end_headers()
            return
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        if length != -1:
            h.send_header("Content-Length", str(len(data) if length is None else length))
        if etag:
            h.send_header("ETag", tag)
        h.end_headers()
        h.wfile.write(data)
    return route


def truncated(data: bytes, declare_length: bool = True) -> Route:
    """Sends half the body (and, if *declare_length*, the full length) then closes."""
    def route(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        if declare_length:
            h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data[:len(data) // 2])
        h.close_connection = True
    return route


def trickle(site: Site, in_status_line: bool = False, delay_s: float = 0.1) -> Route:
    """One byte every *delay_s*: of the status line, or of a large body."""
    def route(h: http.server.BaseHTTPRequestHandler) -> None:
        if in_status_line:
            payload = b"HTTP/1.1 200 OK" + b" " * 100_000
        else:
            h.send_response(200)
            h.send_header("Content-Length", "100000")
            h.end_headers()
            h.wfile.flush()
            payload = b"{" + b" " * 99_999
        for i in range(len(payload)):
            h.wfile.write(payload[i:i + 1])
            h.wfile.flush()
            if site.release.wait(delay_s):
                return
    return route


@pytest.fixture
def site():
    s = Site()
    yield s
    s.close()


@pytest.fixture
def silent_url():
    """A port that accepts connections (the kernel completes them) and never answers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield f"http://127.0.0.1:{s.getsockname()[1]}/allowlist.json"
    s.close()


class Pullers:
    """make(url, **kw) -> an AllowlistPuller on tmp_path; every one is stopped after."""

    def __init__(self, tmp_path: Path, key: Ed25519PrivateKey):
        self.tmp_path = tmp_path
        self.key = key
        self.dest = tmp_path / "etc" / "allowlist.toml"
        self.state = tmp_path / "state"
        self.events: list[tuple[str, dict]] = []
        self.made: list[AllowlistPuller] = []

    def make(self, url: str, **kw) -> AllowlistPuller:
        kw.setdefault("timeout_s", 5.0)
        p = AllowlistPuller(url, kw.pop("keys", [self.key.public_key()]), self.dest,
                            self.state, on_event=lambda name, f: self.events.append((name, f)),
                            **kw)
        self.made.append(p)
        return p

    def applied_version(self) -> int | None:
        path = self.state / "allowlist.version"
        return json.loads(path.read_text())["version"] if path.exists() else None


@pytest.fixture
def pullers(tmp_path, key):
    p = Pullers(tmp_path, key)
    yield p
    for puller in p.made:
        assert puller.stop(5.0)


def snapshot(path: Path) -> tuple[bytes, int, int]:
    st = os.lstat(path)
    return path.read_bytes(), st.st_ino, st.st_mtime_ns


def one_line(message: str) -> bool:
    return "\n" not in message and "\r" not in message and len(message) < 400


# --- format, signing and verifying -------------------------------------------------------

def test_bundle_follows_the_documented_format(key):
    bundle = sign_allowlist(LIST_B, key, 7)
    doc = json.loads(bundle)
    assert sorted(doc) == sorted(["format", "version", "signed_at", "key_id", "allowlist",
                                  "signature"])
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    assert doc["format"] == "guard-allowlist/1" and doc["version"] == 7
    assert doc["key_id"] == hashlib.sha256(raw).hexdigest()[:16] == key_id_of(key.public_key())
    assert doc["allowlist"].encode() == LIST_B and doc["signed_at"].endswith("Z")
    canonical = json.dumps({k: v for k, v in doc.items() if k != "signature"},
                           sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    assert canonical == signing_input(doc)
    key.public_key().verify(base64.b64decode(doc["signature"]), canonical)   # raises if bad
    signed = verify_bundle(bundle, [key.public_key()], min_version=6)
    assert (signed.version, signed.text, signed.entries) == (7, LIST_B, 2)
    # a bundle made from the spec alone verifies too
    assert verify_bundle(forge(key, LIST_A, 3), [key.public_key()], min_version=None).text \
        == LIST_A


def test_sign_refuses_a_list_that_does_not_load(key):
    with pytest.raises(DistributionError) as exc:
        sign_allowlist(BAD_LIST, key, 1, source="lists/allowlist.toml")
    assert str(exc.value).startswith("lists/allowlist.toml:5: unknown key 'colour'")
    with pytest.raises(DistributionError, match="version must be an integer"):
        sign_allowlist(LIST_A, key, 0)


def _flip_list(b: bytes) -> bytes:
    doc = json.loads(b)
    doc["allowlist"] = doc["allowlist"].replace("tool 1", "tool 9")
    return json.dumps(doc).encode()


def _flip_signature(b: bytes) -> bytes:
    doc = json.loads(b)
    sig = bytearray(base64.b64decode(doc["signature"]))
    sig[10] ^= 0x01
    doc["signature"] = base64.b64encode(bytes(sig)).decode()
    return json.dumps(doc).encode()


def _drop(field: str) -> Callable[[bytes], bytes]:
    def drop(b: bytes) -> bytes:
        doc = json.loads(b)
        del doc[field]
        return json.dumps(doc).encode()
    return drop


VERIFY_REFUSALS = [
    ("flipped byte in the list", _flip_list, "bad signature for key"),
    ("flipped byte in the signature", _flip_signature, "bad signature for key"),
    ("missing field", _drop("version"), "bundle misses field(s) version"),
    ("wrong format", lambda b: b.replace(b"guard-allowlist/1", b"guard-allowlist/9"),
     "unknown bundle format 'guard-allowlist/9'"),
    ("extra field", lambda b: b[:-1] + b', "admin": "mallory"}', "unknown field(s) admin"),
    ("duplicate field", lambda b: b[:-1] + b', "version": 99}', "duplicate field 'version'"),
    ("truncated", lambda b: b[:len(b) // 2], "not a complete JSON document (truncated"),
    ("html page", lambda b: b"<html><body>502 Bad Gateway</body></html>", "an HTML page"),
    ("random bytes", lambda b: bytes(range(256)) * 4, "not UTF-8"),
    ("empty", lambda b: b"", "empty download"),
    ("json array", lambda b: b"[1, 2]", "a JSON object is expected"),
    ("version a string", lambda b: b.replace(b'"version": 5', b'"version": "5"'),
     "bundle version must be an integer"),
]


@pytest.mark.parametrize("name,mutate,expected", VERIFY_REFUSALS,
                         ids=[c[0] for c in VERIFY_REFUSALS])
def test_verify_refuses(key, name, mutate, expected):
    good = forge(key, LIST_A, 5)
    with pytest.raises(DistributionError) as exc:
        verify_bundle(mutate(good), [key.public_key()], min_version=None, source="B")
    assert str(exc.value).startswith("B: ") and expected in str(exc.value)
    assert one_line(str(exc.value))


def test_verify_refuses_unknown_key_old_version_and_a_list_that_does_not_load(key, other_key):
    trusted = [key.public_key()]
    with pytest.raises(DistributionError, match=f"signed by unknown key "
                       f"'{key_id_of(other_key.public_key())}' \\(trusted: "
                       f"{key_id_of(key.public_key())}\\)"):
        verify_bundle(forge(other_key, LIST_A, 5), trusted, min_version=None)
    # a forged key_id naming the trusted key does not help
    with pytest.raises(DistributionError, match="bad signature"):
        verify_bundle(forge(other_key, LIST_A, 5, key_id=key_id_of(key.public_key())),
                      trusted, min_version=None)
    with pytest.raises(DistributionError, match=r"older or same version 5 <= 5: refused"):
        verify_bundle(forge(key, LIST_A, 5), trusted, min_version=5)
    with pytest.raises(DistributionError, match=r"older or same version 4 <= 5: refused"):
        verify_bundle(forge(key, LIST_A, 4), trusted, min_version=5)
    with pytest.raises(DistributionError) as exc:
        verify_bundle(forge(key, BAD_LIST, 6), trusted, min_version=None, source="U")
    assert str(exc.value).startswith("U[allowlist]:5: unknown key 'colour'")
    # key rotation: either trusted key verifies
    both = [key.public_key(), other_key.public_key()]
    assert verify_bundle(forge(other_key, LIST_A, 9), both, min_version=8).version == 9


def test_keys_load_from_files_pem_and_base64(tmp_path, key, other_key):
    pem1, pem2 = public_pem_of(key.public_key()), public_pem_of(other_key.public_key())
    both = tmp_path / "both.pub"
    both.write_bytes(pem1 + pem2)
    os.chmod(both, 0o644)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    ids = lambda keys: sorted(key_id_of(k) for k in keys)
    expected = sorted([key_id_of(key.public_key()), key_id_of(other_key.public_key())])
    assert ids(load_public_keys([both])) == expected
    assert ids(load_public_keys([str(both), pem1.decode()])) == expected   # duplicates once
    assert ids(load_public_keys([base64.b64encode(raw).decode()])) == expected[:0] + \
        [key_id_of(key.public_key())]
    os.chmod(both, 0o664)
    with pytest.raises(DistributionError, match=r"writable by group or others"):
        load_public_keys([both])
    with pytest.raises(DistributionError, match="no trusted public key"):
        load_public_keys([])
    with pytest.raises(DistributionError, match="cannot open"):
        load_public_keys([str(tmp_path / "missing.pub")])
    private_pem, _ = generate_keypair()
    priv = tmp_path / "k.pem"
    priv.write_bytes(private_pem)
    os.chmod(priv, 0o600)
    with pytest.raises(DistributionError, match="BEGIN PUBLIC KEY"):
        load_public_keys([priv])
    assert key_id_of(load_private_key(priv).public_key())
    os.chmod(priv, 0o640)
    with pytest.raises(DistributionError, match="readable by group or others"):
        load_private_key(priv)


# --- the puller against real servers -----------------------------------------------------

def test_pull_applies_a_good_bundle(site, pullers, key):
    site.publish(sign_allowlist(LIST_B, key, 10))
    puller = pullers.make(site.url())
    result = puller.pull_once()
    assert result.outcome is PullOutcome.APPLIED and result.ok, result.message
    assert (result.version, result.applied_version) == (10, 10)
    assert pullers.dest.read_bytes() == LIST_B
    assert stat.S_IMODE(os.stat(pullers.dest).st_mode) == 0o644
    assert os.stat(pullers.dest).st_uid == os.geteuid()
    store = AllowlistStore(pullers.dest)
    assert store.reload() == (True, None) and len(store.current) == 2
    assert len(parse_allowlist(pullers.dest.read_bytes())) == 2
    assert pullers.applied_version() == 10
    assert [x.name for x in pullers.dest.parent.iterdir()] == ["allowlist.toml"]   # no tmp
    (name, fields), = pullers.events
    assert name == "allowlist-pull" and fields["outcome"] == "success"
    assert fields["version"] == 10 and fields["previous_version"] is None
    assert fields["entries"] == 2 and fields["key_id"] == key_id_of(key.public_key())
    st = puller.status()
    assert (st["applied_version"], st["pulls"], st["applied"], st["last_error"]) == \
        (10, 1, 1, None)
    assert st["url"] == site.url() and st["last_pull_at"]

    # the same version again is "unchanged": no write, no event
    before = snapshot(pullers.dest)
    again = puller.pull_once()
    assert again.outcome is PullOutcome.UNCHANGED and snapshot(pullers.dest) == before
    assert len(pullers.events) == 1
    # a new puller (agent restart) reads the applied version from the state folder
    assert pullers.make(site.url()).status()["applied_version"] == 10


def _big(n: int) -> bytes:
    return json.dumps({"format": FORMAT, "pad": "x" * n}).encode()


# (id, route maker given (site, key, other_key), expected message part, outcome)
PULL_REFUSALS = [
    ("flipped byte in the list", lambda s, k, o: answer(_flip_list(forge(k, LIST_C, 6))),
     "bad signature for key", PullOutcome.REJECTED),
    ("flipped byte in the signature",
     lambda s, k, o: answer(_flip_signature(forge(k, LIST_C, 6))), "bad signature for key",
     PullOutcome.REJECTED),
    ("unknown key", lambda s, k, o: answer(forge(o, LIST_C, 6)), "signed by unknown key",
     PullOutcome.REJECTED),
    ("older version", lambda s, k, o: answer(forge(k, LIST_C, 4)),
     "older or same version 4 <= 5: refused", PullOutcome.REJECTED),
    ("same version, other list", lambda s, k, o: answer(forge(k, LIST_C, 5)),
     "older or same version 5 <= 5: refused", PullOutcome.REJECTED),
    ("signed list that does not load", lambda s, k, o: answer(forge(k, BAD_LIST, 6)),
     "[allowlist]:5: unknown key 'colour'", PullOutcome.REJECTED),
    ("truncated, Content-Length larger than the body",
     lambda s, k, o: truncated(forge(k, LIST_C, 6)), "truncated download: got",
     PullOutcome.FAILED),
    ("truncated, no Content-Length",
     lambda s, k, o: truncated(forge(k, LIST_C, 6), declare_length=False),
     "not a complete JSON document (truncated download?)", PullOutcome.REJECTED),
    ("html error page", lambda s, k, o: answer(b"<!doctype html><h1>Sign in</h1>",
                                               ctype="text/html"),
     "not JSON at line 1 (an HTML page", PullOutcome.REJECTED),
    ("random bytes", lambda s, k, o: answer(bytes(range(256)) * 64), "not UTF-8",
     PullOutcome.REJECTED),
    ("http 500", lambda s, k, o: answer(b"oops", status=500),
     "HTTP 500 Internal Server Error: no bundle fetched", PullOutcome.FAILED),
    ("http 404", lambda s, k, o: answer(b"", status=404), "HTTP 404 Not Found",
     PullOutcome.FAILED),
    ("oversize, declared", lambda s, k, o: answer(_big(200_000)),
     "bundle too large: 200", PullOutcome.FAILED),
    ("oversize, streamed", lambda s, k, o: answer(_big(200_000), length=-1),
     "bundle too large: more than 100000 bytes", PullOutcome.FAILED),
]


@pytest.mark.parametrize("name,make_route,expected,outcome", PULL_REFUSALS,
                         ids=[c[0] for c in PULL_REFUSALS])
def test_pull_refuses_and_keeps_the_last_good_list(site, pullers, key, other_key, name,
                                                   make_route, expected, outcome):
    site.publish(forge(key, LIST_A, 5))
    puller = pullers.make(site.url(), max_bytes=100_000)
    assert puller.pull_once().outcome is PullOutcome.APPLIED
    before, state_before = snapshot(pullers.dest), (pullers.state / "allowlist.version"
                                                    ).read_bytes()

    site.routes["/allowlist.json"] = make_route(site, key, other_key)
    result = puller.pull_once()
    assert result.outcome is outcome and not result.ok
    assert expected in result.message and one_line(result.message), result.message
    assert result.message.startswith(site.url()), result.message
    assert result.applied_version == 5
    assert snapshot(pullers.dest) == before                       # last good list stays
    assert (pullers.state / "allowlist.version").read_bytes() == state_before
    name_, fields = pullers.events[-1]
    assert (name_, fields["outcome"], fields["message"]) == ("allowlist-pull", "failure",
                                                             result.message)
    st = puller.status()
    assert st["last_error"] == result.message and st["applied_version"] == 5
    assert st["rejected" if outcome is PullOutcome.REJECTED else "failed"] == 1
    assert [x.name for x in pullers.dest.parent.iterdir()] == ["allowlist.toml"]


def test_a_repeated_failure_is_reported_once(site, pullers, key):
    site.routes["/allowlist.json"] = answer(b"", status=503)
    puller = pullers.make(site.url())
    assert not puller.pull_once().ok and not puller.pull_once().ok
    assert len(pullers.events) == 1 and puller.status()["failed"] == 2
    site.publish(forge(key, LIST_A, 1))
    assert puller.pull_once().outcome is PullOutcome.APPLIED
    site.routes["/allowlist.json"] = answer(b"", status=503)
    puller.pull_once()
    assert [f["outcome"] for _, f in pullers.events] == ["failure", "success", "failure"]


def test_conditional_get_saves_the_download(site, pullers, key):
    site.publish(forge(key, LIST_A, 3), etag=True)
    puller = pullers.make(site.url())
    assert puller.pull_once().outcome is PullOutcome.APPLIED
    result = puller.pull_once()
    assert result.outcome is PullOutcome.UNCHANGED and "not modified" in result.message
    assert site.requests[-1][1].get("If-None-Match")
    assert len(pullers.events) == 1


@pytest.mark.parametrize("server", ["silent", "slow body", "slow status line"])
def test_a_hanging_server_cannot_hold_a_pull(site, silent_url, pullers, server):
    if server == "silent":
        url = silent_url
    else:
        site.routes["/allowlist.json"] = trickle(site, in_status_line=server != "slow body")
        url = site.url()
    puller = pullers.make(url, timeout_s=1.0)
    t0 = time.monotonic()
    result = puller.pull_once()
    elapsed = time.monotonic() - t0
    assert elapsed < 1.0 + 1.5, elapsed
    assert result.outcome is PullOutcome.FAILED
    assert "timed out after 1 s (total deadline)" in result.message, result.message
    assert not pullers.dest.exists()
    assert pullers.events[-1][1]["outcome"] == "failure"


def test_stop_cuts_a_hanging_download_short(site, pullers):
    site.routes["/allowlist.json"] = trickle(site)
    puller = pullers.make(site.url(), timeout_s=60.0, interval_s=3600)
    puller.start()
    deadline = time.monotonic() + 10
    while not site.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert site.requests, "the puller never asked"
    time.sleep(0.2)                                 # the body is trickling now
    t0 = time.monotonic()
    assert puller.stop(timeout_s=5.0)
    assert time.monotonic() - t0 < 1.5
    assert not puller.status()["running"]
    assert pullers.events == []                     # our own stop is not a failure


def test_the_thread_applies_newer_versions_and_ignores_older(site, pullers, key):
    def wait_until(predicate, what: str) -> None:
        deadline = time.monotonic() + 15
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)

    site.publish(forge(key, LIST_A, 100))
    puller = pullers.make(site.url(), interval_s=0.05)
    puller.start()
    wait_until(lambda: pullers.applied_version() == 100, "version 100")
    assert pullers.dest.read_bytes() == LIST_A

    site.publish(forge(key, LIST_B, 101))           # published later
    wait_until(lambda: pullers.applied_version() == 101, "version 101")
    wait_until(lambda: pullers.dest.read_bytes() == LIST_B, "the list of version 101")

    site.publish(forge(key, LIST_C, 99))            # an older one republished: rollback
    wait_until(lambda: puller.status()["rejected"] >= 1, "the rollback to be refused")
    pulls = puller.status()["pulls"]
    wait_until(lambda: puller.status()["pulls"] >= pulls + 2, "two more pulls")
    assert pullers.applied_version() == 101 and pullers.dest.read_bytes() == LIST_B
    failures = [f for _, f in pullers.events if f["outcome"] == "failure"]
    assert len(failures) == 1                       # reported once, not every interval
    assert "older or same version 99 <= 101: refused" in failures[0]["message"]
    assert puller.stop(5.0)
    assert [f["version"] for _, f in pullers.events if f["outcome"] == "success"] == [100, 101]


def test_a_symlink_at_dest_is_refused(site, pullers, key, tmp_path):
    real = tmp_path / "real.toml"
    real.write_bytes(LIST_A)
    pullers.dest.parent.mkdir()
    pullers.dest.symlink_to(real)
    site.publish(forge(key, LIST_B, 1))
    result = pullers.make(site.url()).pull_once()
    assert result.outcome is PullOutcome.FAILED
    assert "refusing to replace a symbolic link" in result.message
    assert pullers.dest.is_symlink() and real.read_bytes() == LIST_A
    assert pullers.applied_version() is None


def test_a_state_file_that_does_not_read_blocks_applying(site, pullers, key):
    pullers.state.mkdir()
    (pullers.state / "allowlist.version").write_text("garbage\n")
    site.publish(forge(key, LIST_A, 1))
    result = pullers.make(site.url()).pull_once()
    assert result.outcome is PullOutcome.REJECTED and "does not read" in result.message
    assert not pullers.dest.exists()
    (pullers.state / "allowlist.version").write_text("7\n")     # a bare number is accepted
    result = pullers.make(site.url()).pull_once()
    assert "older or same version 1 <= 7" in result.message


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """(cert, key) PEM files for 127.0.0.1, valid for a day."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "guard test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "server.crt", tmp_path / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_https_with_the_configured_ca_file(tmp_path, pullers, key):
    cert, cert_key = self_signed(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, cert_key)
    site = Site(tls)
    try:
        site.publish(forge(key, LIST_B, 2))
        untrusted = pullers.make(site.url()).pull_once()
        assert untrusted.outcome is PullOutcome.FAILED
        assert "certificate verify failed" in untrusted.message, untrusted.message
        result = pullers.make(site.url(), ca_file=cert).pull_once()
        assert result.outcome is PullOutcome.APPLIED, result.message
        assert pullers.dest.read_bytes() == LIST_B
    finally:
        site.close()


def test_a_failing_event_callback_does_not_stop_the_pull(site, tmp_path, key):
    def explode(name, fields):
        raise RuntimeError("audit log full")

    site.publish(forge(key, LIST_A, 1))
    puller = AllowlistPuller(site.url(), [key.public_key()], tmp_path / "a.toml",
                             tmp_path / "state", on_event=explode)
    assert puller.pull_once().outcome is PullOutcome.APPLIED
    assert puller.status()["last_event_error"] == "RuntimeError: audit log full"
    assert (tmp_path / "a.toml").read_bytes() == LIST_A


def test_puller_refuses_bad_settings(tmp_path, key):
    with pytest.raises(DistributionError, match="http:// or https://"):
        AllowlistPuller("file:///etc/passwd", [key.public_key()], tmp_path / "a", tmp_path)
    with pytest.raises(DistributionError, match="no trusted public key"):
        AllowlistPuller("https://example.invalid/a.json", [], tmp_path / "a", tmp_path)


# --- guard allow keygen | sign | verify ---------------------------------------------------

@pytest.fixture
def guard(tmp_path, guard_cmd):
    conf = tmp_path / "config.toml"
    conf.write_text(f'allowlist = "{tmp_path / "allowlist.toml"}"\n'
                    f'log_file = "{tmp_path / "audit.jsonl"}"\n'
                    f'state_dir = "{tmp_path / "state"}"\n'
                    f'quarantine_dir = "{tmp_path / "q"}"\n'
                    f'watch = []\n')

    def run(*argv) -> subprocess.CompletedProcess:
        return subprocess.run([*guard_cmd, "allow", *map(str, argv), "--config", conf],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
    return run


def test_guard_allow_keygen_sign_verify(guard, tmp_path):
    (tmp_path / "allowlist.toml").write_bytes(LIST_B)
    priv, pub = tmp_path / "signing.pem", tmp_path / "signing.pub"
    r = guard("keygen", "--private", priv, "--public", pub)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    r = guard("keygen", "--private", priv, "--public", tmp_path / "other.pub")
    assert r.returncode == 2 and "refusing to overwrite" in r.stderr
    assert not (tmp_path / "other.pub").exists()

    out = tmp_path / "www" / "allowlist.json"
    out.parent.mkdir()
    r = guard("sign", "--key", priv, "--out", out)               # the config's allowlist
    assert r.returncode == 0, r.stderr
    first = json.loads(out.read_bytes())["version"]
    assert first >= int(time.time()) - 60
    r = guard("verify", out, "--pubkey", pub)
    assert r.returncode == 0, r.stderr
    assert f"valid: version {first}, key " in r.stdout and "2 entries" in r.stdout

    (tmp_path / "next.toml").write_bytes(LIST_C)
    r = guard("sign", "--key", priv, "--out", out, "next.toml")  # numbered after --out
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_bytes())
    assert doc["version"] > first and doc["allowlist"].encode() == LIST_C
    r = guard("verify", out, "--pubkey", pub, "--min-version", first, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["entries"] == 3
    assert verify_bundle(out.read_bytes(), load_public_keys([pub]),
                         min_version=first).text == LIST_C

    r = guard("sign", "--key", priv, "--version", first, "--out", out)
    assert r.returncode == 2 and "agents would refuse it" in r.stderr
    r = guard("verify", out, "--pubkey", pub, "--min-version", doc["version"])
    assert r.returncode == 2 and "older or same version" in r.stderr
    other_pub = tmp_path / "o.pub"
    other_pub.write_bytes(generate_keypair()[1])
    r = guard("verify", out, "--pubkey", other_pub)
    assert r.returncode == 2 and "signed by unknown key" in r.stderr

    r = guard("sign", "--key", priv, "--version", "42", "next.toml")   # to stdout
    assert r.returncode == 0 and json.loads(r.stdout)["version"] == 42


def test_guard_allow_sign_refuses_a_broken_list(guard, tmp_path):
    private_pem, _ = generate_keypair()
    priv = tmp_path / "k.pem"
    priv.write_bytes(private_pem)
    os.chmod(priv, 0o600)
    (tmp_path / "bad.toml").write_bytes(BAD_LIST)
    r = guard("sign", "--key", priv, "--out", tmp_path / "b.json", tmp_path / "bad.toml")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [f"guard: error: {tmp_path / 'bad.toml'}:5: unknown key "
                                     "'colour' in [[allow]] (expected one of sha256, path or "
                                     "signer, and reason, added_by, expires): not signed"]
    assert not (tmp_path / "b.json").exists()
    r = guard("sign", "--key", tmp_path / "missing.pem", tmp_path / "bad.toml")
    assert r.returncode == 2 and "missing.pem: cannot open" in r.stderr


def test_the_agent_pulls_applies_and_logs_a_signed_allowlist(agent, site, key, tmp_path):
    """The real agent with allowlist_url: a signed list from the loopback server is
    applied and enforced (status shows its entries), a tampered one is refused and logged,
    and the last good list stays."""
    from daemon_support import wait_until
    pub = tmp_path / "fleet.pub"
    pub.write_bytes(public_pem_of(key.public_key()))
    site.publish(sign_allowlist(allowlist_text(3), key, version=7))
    a = agent(extra=f'allowlist_url = "{site.url()}"\nallowlist_pubkeys = ["{pub}"]\n'
                    'allowlist_pull_s = 0.5')
    assert wait_until(lambda: a.status()["allowlist"]["entries"] == 3, 10)
    assert a.status()["allowlist"]["pull"]["applied_version"] == 7
    pulls = [r for r in a.records() if r["event"]["action"] == "allowlist-pull"]
    assert pulls and pulls[0]["event"]["outcome"] == "success"
    site.publish(_flip_list(sign_allowlist(allowlist_text(5), key, version=8)))
    assert wait_until(lambda: any(r["event"]["action"] == "allowlist-pull" and
                                  r["event"]["outcome"] == "failure" for r in a.records()), 10)
    assert a.status()["allowlist"]["entries"] == 3                 # the last good list stays
    refused = next(r for r in a.records() if r["event"]["action"] == "allowlist-pull"
                   and r["event"]["outcome"] == "failure")
    assert "signature" in refused["message"] and "\n" not in refused["message"]
