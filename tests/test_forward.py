"""Syslog forwarding: real rsyslog on loopback (TCP, UDP), a real TLS server thread, real
sockets throughout; no mocks. rsyslog is started per test with its own config (imtcp and
imudp only: no /dev/log, no kernel log) and always stopped afterwards."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from guard.audit import AuditLog
from guard.audit.forward import (ForwardError, SyslogForwarder, Target, format_cef,
                                 format_syslog, parse_target, read_cursor, sd_escape,
                                 severity_of)
from guard.errors import ConfigError

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
# In CI (which runs packaging/install.sh --test) a missing rsyslogd is a failure, not a skip.
needs_rsyslog = pytest.mark.skipif(not os.access(RSYSLOGD, os.X_OK) and not os.environ.get("CI"),
                                   reason="rsyslogd not installed (packaging/install.sh --test)")
WAIT_S = 10.0


# --- helpers -------------------------------------------------------------------------------

def wait_until(check, timeout_s: float = WAIT_S, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_records(log: AuditLog, n: int, start: int = 0, pad: int = 0) -> None:
    for i in range(start, start + n):
        log.write({"event": {"kind": "alert" if i % 3 == 0 else "event",
                             "action": "quarantine" if i % 3 == 0 else "file-scanned",
                             "outcome": "success", "reason": f'record {i} "q" ] \\ |='},
                   "file": {"path": f"/home/u/Downloads/f {i}|x=y].pdf.exe"},
                   "guard": {"verdict": "malicious" if i % 3 == 0 else "clean"},
                   "message": "x" * pad if pad else f"n\u00e9 {i}"})


def log_lines(path: Path) -> list[bytes]:
    """Every line of the log, oldest file first."""
    files = sorted(path.parent.glob(path.name + ".*"),
                   key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    files = [f for f in files if f.suffix[1:].isdigit()] + [path]
    return [line for f in files if f.exists() for line in f.read_bytes().splitlines()]


def parse_sd(text: str) -> tuple[dict[str, dict[str, str]], str]:
    """RFC 5424 STRUCTURED-DATA at the start of ``text`` -> ({id: {name: value}}, rest)."""
    if text.startswith("- "):
        return {}, text[2:]
    out: dict[str, dict[str, str]] = {}
    i = 0
    while i < len(text) and text[i] == "[":
        j = text.index(" ", i)
        sd_id, params, i = text[i + 1:j], {}, j
        while text[i] == " ":
            eq = text.index("=", i)
            name, i = text[i + 1:eq], eq + 2          # skip ="
            value = []
            while text[i] != '"':
                if text[i] == "\\" and text[i + 1] in '"\\]':
                    i += 1
                value.append(text[i])
                i += 1
            params[name] = "".join(value)
            i += 1
        assert text[i] == "]", text[i:i + 20]
        out[sd_id] = params
        i += 1
    assert text[i] == " "
    return out, text[i + 1:]


@dataclass
class Msg:
    pri: int
    timestamp: str
    hostname: str
    app: str
    procid: str
    msgid: str
    sd: dict[str, dict[str, str]]
    msg: bytes

    @property
    def seq(self) -> int:
        return int(self.sd["guard@32473"]["seq"])


def parse_5424(raw: bytes) -> Msg:
    m = re.match(rb"<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) ", raw)
    assert m, raw[:80]
    sd, rest = parse_sd(raw[m.end():].decode("utf-8"))
    return Msg(int(m.group(1)), *(g.decode() for g in m.groups()[1:]), sd,
               rest.encode("utf-8"))


def parse_cef(line: str) -> tuple[list[str], dict[str, str]]:
    """CEF line -> (7 header fields after CEF:0, extension dict), unescaped."""
    assert line.startswith("CEF:0|")
    header, cur, i = [], [], len("CEF:0|")
    while len(header) < 6:
        c = line[i]
        if c == "\\":
            cur.append(line[i + 1])
            i += 2
        elif c == "|":
            header.append("".join(cur))
            cur, i = [], i + 1
        else:
            cur.append(c)
            i += 1
    ext_text = line[i:]
    keys = list(re.finditer(r"(?:^| )([A-Za-z0-9_]+)=", ext_text))
    ext = {}
    for k, nxt in zip(keys, keys[1:] + [None]):
        value = ext_text[k.end():nxt.start() if nxt else len(ext_text)]
        ext[k.group(1)] = re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(
            m.group(1), m.group(1)), value)
    return header, ext


# --- a real rsyslog ------------------------------------------------------------------------

class Rsyslog:
    """rsyslogd in the foreground on loopback: imtcp + imudp into one file, raw."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "work").mkdir(exist_ok=True)
        self.tcp_port, self.udp_port = free_port(), free_port(socket.SOCK_DGRAM)
        self.out = root / "out.log"
        self.conf = root / "rsyslog.conf"
        self.conf.write_text(f"""
global(workDirectory="{root / 'work'}" maxMessageSize="64k")
module(load="imtcp")
module(load="imudp")
input(type="imtcp" port="{self.tcp_port}" address="127.0.0.1" ruleset="fwd")
input(type="imudp" port="{self.udp_port}" address="127.0.0.1" ruleset="fwd")
template(name="raw" type="string"
         string="%pri%\\t%app-name%\\t%msgid%\\t%structured-data%\\t%rawmsg%\\n")
ruleset(name="fwd") {{ action(type="omfile" file="{self.out}" template="raw") }}
""")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Rsyslog":
        err = open(self.root / "stderr.log", "ab")
        try:
            self.proc = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.root / "rsyslog.pid")],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
        finally:
            err.close()
        wait_until(self._ready, what="rsyslog to listen")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"rsyslogd exited: "
                                 f"{(self.root / 'stderr.log').read_text()[-2000:]}")
        udp = f"0100007F:{self.udp_port:04X}"
        if not any(line.split()[1] == udp for line in
                   Path("/proc/net/udp").read_text().splitlines()[1:]):
            return False
        try:
            socket.create_connection(("127.0.0.1", self.tcp_port), timeout=1).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def received(self) -> list[tuple[list[str], Msg]]:
        """(rsyslog's parsed pri, app-name, msgid, structured-data; our parse of the raw
        message) per message received."""
        if not self.out.exists():
            return []
        out = []
        data = self.out.read_bytes()
        data = data[:data.rfind(b"\n") + 1]     # rsyslog may be writing the last line now
        for line in data.splitlines():
            parts = line.split(b"\t", 4)
            out.append(([p.decode() for p in parts[:4]], parse_5424(parts[4])))
        return out


@pytest.fixture
def rsyslog(tmp_path):
    """A started rsyslog; stopped (SIGTERM, then SIGKILL) whatever the test did."""
    r = Rsyslog(tmp_path / "rsyslog")
    try:
        yield r.start()
    finally:
        r.stop()


@pytest.fixture
def forwarders():
    """make(...) -> a SyslogForwarder; every one is stopped at teardown."""
    made: list[SyslogForwarder] = []

    def make(*args, **kwargs) -> SyslogForwarder:
        kwargs.setdefault("poll_s", 0.05)
        kwargs.setdefault("idle_poll_s", 0.2)
        f = SyslogForwarder(*args, **kwargs)
        made.append(f)
        return f

    yield make
    for f in made:
        assert f.stop(5.0)


# --- a real TCP/TLS collector in a thread --------------------------------------------------

class Collector:
    """Accepts connections and reads octet-counted syslog frames (plain or TLS).

    ``read=False``: accept and never read (a hung collector)."""

    def __init__(self, tls: ssl.SSLContext | None = None, read: bool = True) -> None:
        self.tls, self.read = tls, read
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if not read:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.messages: list[bytes] = []
        self.errors: list[str] = []
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._accept)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            with self.lock:
                self.conns.append(conn)
            if self.read:
                t = threading.Thread(target=self._serve, args=(conn,))
                self.threads.append(t)
                t.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
                with self.lock:
                    self.conns.append(conn)
            conn.settimeout(0.05)
            buf = b""
            while not self.done.is_set():
                try:
                    data = conn.recv(65536)
                except (socket.timeout, ssl.SSLWantReadError):
                    continue
                if not data:
                    break
                buf += data
                while b" " in buf[:12]:
                    length, _, rest = buf.partition(b" ")
                    if len(rest) < int(length):
                        break
                    with self.lock:
                        self.messages.append(rest[:int(length)])
                    buf = rest[int(length):]
        except (OSError, ValueError) as e:
            with self.lock:
                self.errors.append(str(e))
        finally:
            conn.close()

    def parsed(self) -> list[Msg]:
        with self.lock:
            return [parse_5424(m) for m in self.messages]

    def close(self) -> None:
        self.done.set()
        for t in self.threads:
            t.join(10)
        self.listener.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def collectors():
    made: list[Collector] = []

    def make(**kwargs) -> Collector:
        c = Collector(**kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(folder: Path, name: str) -> Pki:
    """A throwaway CA, a server cert for 127.0.0.1/localhost and a client cert."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)

    def key_pem(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def cert(subject: str, key, issuer_name, issuer_key, ca: bool, extra=()):
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(issuer_name).public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5))
             .not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                            critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                 issuer_key.public_key()), critical=False))
        if ca:
            b = b.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False),
                critical=True)
        for ext in extra:
            b = b.add_extension(ext, critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca_cert = cert(f"{name} test CA", ca_key, ca_name, ca_key, True)
    paths = Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key",
                folder / "client.pem", folder / "client.key")
    paths.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    for who, cert_path, key_path, extra in (
            ("server", paths.server_cert, paths.server_key,
             [x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                           x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
              x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])]),
            ("client", paths.client_cert, paths.client_key,
             [x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])])):
        key = ec.generate_private_key(ec.SECP256R1())
        c = cert(f"{name} {who}", key, ca_name, ca_key, False, extra)
        cert_path.write_bytes(c.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key_pem(key))
    return paths


def server_context(pki: Pki, client_ca: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
    return ctx


# --- targets and message format (no network) -----------------------------------------------

@pytest.mark.parametrize("text, want", [
    ("udp://10.0.0.5:514", Target("udp", "10.0.0.5", 514)),
    ("tcp://siem.example.com:1514", Target("tcp", "siem.example.com", 1514)),
    ("TLS://[::1]:6514", Target("tls", "::1", 6514)),
    ("  tls://collector:6514 ", Target("tls", "collector", 6514)),
])
def test_parse_target_accepts(text, want):
    assert parse_target(text) == want
    assert parse_target(str(want)) == want


@pytest.mark.parametrize("text, says", [
    ("", "is empty"),
    ("siem:514", "has no scheme"),
    ("http://siem:514", "unknown scheme 'http'"),
    ("relp://siem:514", "unknown scheme 'relp'"),
    ("tcp://siem", "has no port: add one, e.g. tcp://siem:514"),
    ("tls://siem", "e.g. tls://siem:6514"),
    ("tcp://siem:", "port '' is not a number"),
    ("tcp://siem:abc", "port 'abc' is not a number"),
    ("tcp://siem:0", "port 0 is out of range 1-65535"),
    ("udp://siem:70000", "port 70000 is out of range"),
    ("tcp://:514", "has no host"),
    ("tcp://siem:514/path", "only HOST:PORT"),
    ("tcp://user@siem:514", "only HOST:PORT"),
    ("tcp://si em:514", "only HOST:PORT"),
    ("tcp://::1:514", "IPv6 address in brackets"),
    ("tcp://[zz]:514", "not an IPv6 address"),
    ("tcp://bad_host!:514", "not a valid host name"),
    ("tcp://x:514\nnext", "only HOST:PORT"),
])
def test_parse_target_rejects_with_one_clear_line(text, says):
    with pytest.raises(ConfigError) as err:
        parse_target(text)
    assert says in str(err.value)
    assert "\n" not in str(err.value)


def test_forwarder_rejects_bad_settings(tmp_path):
    log = tmp_path / "audit.jsonl"
    with pytest.raises(ConfigError, match="format 'json' is unknown"):
        SyslogForwarder(log, "tcp://h:514", tmp_path, fmt="json")
    with pytest.raises(ConfigError, match="facility 'nope' is unknown"):
        SyslogForwarder(log, "tcp://h:514", tmp_path, facility="nope")
    with pytest.raises(ConfigError, match="is not tls://"):
        SyslogForwarder(log, "tcp://h:514", tmp_path, tls_ca=tmp_path / "ca.pem")
    with pytest.raises(ConfigError, match="cannot load the syslog TLS CA") as err:
        SyslogForwarder(log, "tls://h:6514", tmp_path, tls_ca=tmp_path / "missing.pem")
    assert err.value.path == str(tmp_path / "missing.pem")


def test_syslog_header_and_structured_data():
    rec = {"@timestamp": "2024-05-01T10:20:30.123Z", "host": {"hostname": "pc 7\u00e9"},
           "event": {"action": "a very long action name with spaces and \u00fc mehr",
                     "kind": "alert"},
           "guard": {"seq": 12, "hash": 'ab"c]d\\e'}}
    raw = format_syslog(rec, b"{}", facility=10)
    m = parse_5424(raw)
    assert m.pri == 10 * 8 + 4                  # authpriv.warning
    assert (m.timestamp, m.hostname, m.app, m.procid) == (
        "2024-05-01T10:20:30.123Z", "pc_7_", "guard", "-")
    assert m.msgid == "a_very_long_action_name_with_spa" and len(m.msgid) == 32
    assert m.sd == {"guard@32473": {"seq": "12", "hash": 'ab"c]d\\e'}}
    assert m.msg == b"{}"
    assert sd_escape('"]\\') == '\\"\\]\\\\'
    bad_time = parse_5424(format_syslog({"@timestamp": "yesterday", "event": {}}, b"x",
                                        hostname="fw-host"))
    assert (bad_time.timestamp, bad_time.hostname, bad_time.msgid, bad_time.sd) == (
        "-", "fw-host", "-", {})


@pytest.mark.parametrize("rec, severity", [
    ({"event": {"action": "quarantine", "kind": "alert"}}, 4),
    ({"event": {"action": "exec-denied", "kind": "alert"}}, 4),
    ({"event": {"action": "quarantine", "kind": "alert", "outcome": "failure"}}, 3),
    ({"event": {"action": "guard-error", "outcome": "failure"}}, 3),
    ({"event": {"action": "break-glass", "kind": "event"}}, 4),
    ({"event": {"action": "restore", "kind": "event"}}, 5),
    ({"event": {"action": "config-reload", "category": ["configuration"]}}, 5),
    ({"event": {"action": "file-scanned", "kind": "event"}}, 6),
    ({}, 6),
])
def test_severity_of(rec, severity):
    assert severity_of(rec) == severity


def test_cef_of_a_quarantine_record():
    rec = {"@timestamp": "2024-05-01T10:20:30.123Z", "host": {"hostname": "pc7"},
           "event": {"kind": "alert", "action": "quarantine", "outcome": "success",
                     "reason": "invoice.pdf.exe is a Windows program disguised as a PDF"},
           "file": {"path": "/home/ann/Downloads/invoice.pdf.exe", "name": "invoice.pdf.exe",
                    "size": 73802, "hash": {"sha256": "ab" * 32}},
           "rule": {"name": ["double_extension", "pe_in_download"]},
           "user": {"name": "ann"},
           "guard": {"verdict": "malicious", "quarantine_id": "q-42", "seq": 7,
                     "hash": "cd" * 32, "codes": ["double-extension"], "mode": "enforce"}}
    header, ext = parse_cef(format_cef(rec, version="1.2.3"))
    assert header == ["guard", "guard", "1.2.3", "quarantine",
                      "invoice.pdf.exe is a Windows program disguised as a PDF", "8"]
    assert ext == {
        "rt": str(int(dt.datetime(2024, 5, 1, 10, 20, 30, 123000,
                                  tzinfo=dt.timezone.utc).timestamp() * 1000)),
        "cat": "alert", "act": "quarantine", "outcome": "success",
        "reason": "invoice.pdf.exe is a Windows program disguised as a PDF",
        "fname": "invoice.pdf.exe", "filePath": "/home/ann/Downloads/invoice.pdf.exe",
        "fileHash": "ab" * 32, "fsize": "73802", "suser": "ann", "dhost": "pc7",
        "cs1Label": "rule", "cs1": "double_extension,pe_in_download",
        "cs2Label": "verdict", "cs2": "malicious", "cs3Label": "quarantineId", "cs3": "q-42",
        "cs4Label": "reasonCodes", "cs4": "double-extension", "cs5Label": "mode",
        "cs5": "enforce", "cs6Label": "chainHash", "cs6": "cd" * 32,
        "cn1Label": "seq", "cn1": "7"}


@pytest.mark.parametrize("hostile", [
    "a|b", "a=b", "back\\slash", "two\nlines", "cr\rlf\r\n", "\\|=\\=\\\\n",
    "key=value fake=1", "trailing\\", "pipe| and = and \\ and \n all",
])
def test_cef_escaping_round_trips(hostile):
    rec = {"event": {"action": f"act{hostile}", "reason": hostile},
           "file": {"path": f"/tmp/{hostile}", "name": hostile}, "message": hostile,
           "user": {"name": hostile}, "guard": {"seq": 3}}
    line = format_cef(rec)
    assert "\n" not in line and "\r" not in line
    header, ext = parse_cef(line)
    assert header[3] == f"act{hostile}".replace("\r", " ").replace("\n", " ")
    assert header[4] == hostile.replace("\r", " ").replace("\n", " ")
    assert len(header) == 6 and header[5] == "1"
    assert ext["reason"] == ext["msg"] == ext["fname"] == ext["suser"] == \
        hostile.replace("\r\n", "\n")
    assert ext["filePath"] == f"/tmp/{hostile}".replace("\r\n", "\n")
    assert ext["cn1"] == "3"


# --- real rsyslog ------------------------------------------------------------------------

@needs_rsyslog
def test_tcp_every_record_arrives_once_byte_for_byte(tmp_path, rsyslog, forwarders):
    path = tmp_path / "log" / "audit.jsonl"
    log = AuditLog(path, fsync=False)
    write_records(log, 300)
    f = forwarders(path, f"tcp://127.0.0.1:{rsyslog.tcp_port}", tmp_path / "state")
    f.start()
    write_records(log, 200, start=300)          # while it runs
    got = wait_until(lambda: len(r := rsyslog.received()) >= 500 and r,
                     what="500 messages at rsyslog")
    assert f.flush(WAIT_S)
    assert f.status()["last_seq_sent"] == 500
    time.sleep(0.2)
    got = rsyslog.received()
    lines = log_lines(path)
    assert len(got) == len(lines) == 500
    for (parsed, m), line in zip(got, lines):
        rec = json.loads(line)
        assert m.msg == line                    # exactly the log's bytes
        assert m.seq == rec["guard"]["seq"]
        assert m.sd["guard@32473"]["hash"] == rec["guard"]["hash"]
        assert m.pri == 10 * 8 + severity_of(rec)
        assert m.timestamp == rec["@timestamp"] and m.msgid == rec["event"]["action"]
        # rsyslog's own RFC 5424 parser read the header the same way
        assert parsed[0] == str(m.pri) and parsed[1:3] == ["guard", m.msgid]
        assert parsed[3] == f'[guard@32473 seq="{m.seq}" hash="{rec["guard"]["hash"]}"]'
    assert [m.seq for _, m in got] == list(range(1, 501))
    status = f.status()
    assert status["sent"] == 500 and status["connected"] and status["backlog"] == 0
    assert status["errors"] == 0 and status["last_error"] is None
    assert f.stop(5.0)
    assert read_cursor(f.cursor_file).seq == 500


@needs_rsyslog
def test_collector_restart_loses_nothing(tmp_path, rsyslog, forwarders):
    path = tmp_path / "log" / "audit.jsonl"
    log = AuditLog(path, max_bytes=20_000, keep=100, fsync=False)   # rotates while down
    f = forwarders(path, f"tcp://127.0.0.1:{rsyslog.tcp_port}", tmp_path / "state")
    f.start()
    write_records(log, 60)
    wait_until(lambda: len(rsyslog.received()) == 60, what="the first 60")
    wait_until(lambda: f.status()["last_seq_sent"] == 60, what="the cursor at 60")
    rsyslog.stop()
    wait_until(lambda: not f.status()["connected"], what="the forwarder to see the close")
    write_records(log, 90, start=60)
    time.sleep(0.3)                              # a few failed reconnects
    assert f.status()["last_seq_sent"] == 60 and f.status()["backlog"] == 90
    rsyslog.start()
    wait_until(lambda: len(rsyslog.received()) >= 150, what="all 150 after the restart")
    wait_until(lambda: read_cursor(f.cursor_file).seq == 150, what="the cursor at 150")
    time.sleep(0.2)
    got = rsyslog.received()
    assert [m.seq for _, m in got] == list(range(1, 151))
    assert [m.msg for _, m in got] == log_lines(path)
    status = f.status()
    assert status["sent"] == 150 and status["gaps"] == 0 and status["errors"] >= 1
    assert "closed the connection" in status["last_error"] or \
        "refused" in status["last_error"].lower()


@needs_rsyslog
def test_forwarder_restart_resumes_from_the_cursor(tmp_path, rsyslog, forwarders):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, fsync=False)
    write_records(log, 300)
    target = f"tcp://127.0.0.1:{rsyslog.tcp_port}"
    first = forwarders(path, target, tmp_path / "state", batch_records=10)
    first.start()
    wait_until(lambda: first.status()["last_seq_sent"] >= 30, what="30 delivered")
    assert first.stop(5.0)
    done = read_cursor(first.cursor_file).seq
    assert done == first.status()["last_seq_sent"] >= 30
    write_records(log, 100, start=300)
    second = forwarders(path, target, tmp_path / "state", batch_records=10)
    second.start()
    wait_until(lambda: second.status()["last_seq_sent"] == 400, what="all 400")
    wait_until(lambda: len(rsyslog.received()) >= 400, what="400 at rsyslog")
    time.sleep(0.2)
    got = rsyslog.received()
    assert [m.seq for _, m in got] == list(range(1, 401))
    assert second.status()["sent"] == 400 - done


@needs_rsyslog
def test_udp_small_batch(tmp_path, rsyslog, forwarders):
    """UDP is best effort (no confirmation); on loopback a small batch arrives whole."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, fsync=False)
    write_records(log, 20)
    f = forwarders(path, f"udp://127.0.0.1:{rsyslog.udp_port}", tmp_path / "state",
                   facility="local3")
    assert f.forward_available() == 20
    wait_until(lambda: len(rsyslog.received()) >= 20, what="20 datagrams")
    got = rsyslog.received()
    assert [m.seq for _, m in got] == list(range(1, 21))
    assert [m.msg for _, m in got] == log_lines(path)
    assert all(m.pri // 8 == 19 for _, m in got)
    assert f.forward_available() == 0           # nothing twice


@needs_rsyslog
def test_cef_over_tcp(tmp_path, rsyslog, forwarders):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, fsync=False)
    write_records(log, 9)
    f = forwarders(path, f"tcp://127.0.0.1:{rsyslog.tcp_port}", tmp_path / "state",
                   fmt="cef")
    assert f.forward_available() == 9
    got = wait_until(lambda: len(r := rsyslog.received()) >= 9 and r, what="9 messages")
    for (_, m), line in zip(got, log_lines(path)):
        rec = json.loads(line)
        header, ext = parse_cef(m.msg.decode("utf-8"))
        assert header[3] == rec["event"]["action"] and header[4] == rec["event"]["reason"]
        assert ext["filePath"] == rec["file"]["path"] and ext["msg"] == rec["message"]
        assert ext["cn1"] == str(rec["guard"]["seq"]) == m.sd["guard@32473"]["seq"]


# --- TLS, hangs, gaps (Python collector) ---------------------------------------------------

def test_tls_with_client_certificate(tmp_path, collectors, forwarders):
    pki = make_pki(tmp_path / "pki", "good")
    server = collectors(tls=server_context(pki, client_ca=pki.ca))
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, fsync=False)
    write_records(log, 50)
    f = forwarders(path, f"tls://127.0.0.1:{server.port}", tmp_path / "state",
                   tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key)
    f.start()
    write_records(log, 25, start=50)
    wait_until(lambda: len(server.parsed()) >= 75, what="75 messages over TLS")
    wait_until(lambda: f.status()["last_seq_sent"] == 75, what="the cursor at 75")
    assert [m.msg for m in server.parsed()] == log_lines(path)
    assert [m.seq for m in server.parsed()] == list(range(1, 76))
    assert f.status()["last_error"] is None and not server.errors


def test_tls_refuses_a_certificate_from_another_ca(tmp_path, collectors, forwarders):
    trusted = make_pki(tmp_path / "trusted", "trusted")
    other = make_pki(tmp_path / "other", "other")
    server = collectors(tls=server_context(other))
    path = tmp_path / "audit.jsonl"
    write_records(AuditLog(path, fsync=False), 5)
    f = forwarders(path, f"tls://127.0.0.1:{server.port}", tmp_path / "state",
                   tls_ca=trusted.ca)
    f.start()
    wait_until(lambda: f.status()["last_error"], what="an error")
    status = f.status()
    assert "TLS certificate refused" in status["last_error"]
    assert "unable to get local issuer certificate" in status["last_error"]
    assert not status["connected"] and status["sent"] == 0
    assert f.stop(5.0)
    assert server.parsed() == [] and not f.cursor_file.exists()
    with pytest.raises(ForwardError, match="TLS certificate refused"):
        forwarders(path, f"tls://127.0.0.1:{server.port}", tmp_path / "state",
                   tls_ca=trusted.ca).forward_available()
    # only when explicitly asked: no verification
    insecure = forwarders(path, f"tls://127.0.0.1:{server.port}", tmp_path / "state",
                          tls_verify=False)
    assert insecure.forward_available() == 5
    wait_until(lambda: len(server.parsed()) == 5, what="5 messages")


def test_stop_returns_promptly_when_the_collector_never_reads(tmp_path, collectors,
                                                              forwarders):
    server = collectors(read=False)
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, fsync=False)
    write_records(log, 150, pad=60_000)          # 9 MB: more than both socket buffers
    f = forwarders(path, f"tcp://127.0.0.1:{server.port}", tmp_path / "state",
                   send_timeout_s=60)
    f.start()
    wait_until(lambda: f.status()["state"] == "sending", what="a send in progress")
    time.sleep(0.5)
    assert f.status()["state"] == "sending"      # blocked on the full socket
    t0 = time.monotonic()
    assert f.stop(timeout_s=3.0)
    assert time.monotonic() - t0 < 2.0
    assert not f.status()["running"]
    assert f.status()["last_seq_sent"] < 150


def test_rotated_out_records_are_reported_as_a_gap(tmp_path, collectors, forwarders):
    server = collectors()
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_bytes=3_000, keep=2, fsync=False)
    target = f"tcp://127.0.0.1:{server.port}"
    write_records(log, 3)
    gaps: list[tuple[int, int]] = []
    f = forwarders(path, target, tmp_path / "state", on_gap=lambda a, b: gaps.append((a, b)))
    assert f.forward_available() == 3
    write_records(log, 60, start=3)               # most rotate out before the next send
    oldest = json.loads(log_lines(path)[0])["guard"]["seq"]
    assert oldest > 4
    assert f.forward_available() == 63 - oldest + 1
    status = f.status()
    assert gaps == [(4, oldest - 1)] and status["gaps"] == 1
    assert status["lost"] == oldest - 4 and status["last_gap"] == [4, oldest - 1]
    assert "rotated out" in status["last_error"]
    wait_until(lambda: len(server.parsed()) == 3 + 63 - oldest + 1, what="all sent")
    assert [m.seq for m in server.parsed()] == [1, 2, 3] + list(range(oldest, 64))


def test_lines_without_a_seq_are_sent_once(tmp_path, collectors, forwarders):
    server = collectors()
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, fsync=False)
    write_records(log, 2)
    log.close()
    with open(path, "ab") as fh:                  # someone edited the log by hand
        fh.write(b"not json at all\n")
    log = AuditLog(path, fsync=False)
    write_records(log, 2, start=2)
    f = forwarders(path, f"tcp://127.0.0.1:{server.port}", tmp_path / "state")
    assert f.forward_available() == 5
    assert f.forward_available() == 0
    write_records(log, 1, start=4)
    assert f.forward_available() == 1
    got = wait_until(lambda: len(m := server.parsed()) == 6 and m, what="6 messages")
    assert [m.msg for m in got] == log_lines(path)
    assert got[2].msgid == "unparseable-line" and got[2].sd == {} and got[2].pri == 83


def test_unreachable_collector(tmp_path, forwarders):
    path = tmp_path / "audit.jsonl"
    write_records(AuditLog(path, fsync=False), 3)
    port = free_port()
    f = forwarders(path, f"tcp://127.0.0.1:{port}", tmp_path / "state")
    with pytest.raises(ForwardError, match="refused"):
        f.forward_available()
    f.start()
    wait_until(lambda: f.status()["errors"] >= 1, what="a reported error")
    status = f.status()
    assert status["running"] and not status["connected"] and status["backlog"] == 3
    assert "refused" in status["last_error"].lower()
    t0 = time.monotonic()
    assert f.stop(5.0) and time.monotonic() - t0 < 1.0


def test_poke_wakes_an_idle_forwarder(tmp_path, collectors, forwarders):
    """Polls are slow here (2 s, growing to 30 s): only poke() can explain a fast send."""
    server = collectors()
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, fsync=False)
    write_records(log, 1)
    f = forwarders(path, f"tcp://127.0.0.1:{server.port}", tmp_path / "state",
                   poll_s=2.0, idle_poll_s=30.0)
    f.start()
    wait_until(lambda: len(server.parsed()) == 1, what="the first record")
    time.sleep(0.3)                              # now in a 2 s wait
    write_records(log, 1, start=1)
    t0 = time.monotonic()
    f.poke()
    wait_until(lambda: len(server.parsed()) == 2, timeout_s=1.5, what="the poked record")
    assert time.monotonic() - t0 < 1.5
    assert f.stop(5.0)
    assert read_cursor(f.cursor_file).seq == 2   # confirmed by the clean close


def test_udp_oversize_records_are_counted_not_sent(tmp_path, forwarders):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, fsync=False)
    write_records(log, 1)
    write_records(log, 1, start=1, pad=70_000)
    write_records(log, 1, start=2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(WAIT_S)
        f = forwarders(path, f"udp://127.0.0.1:{rx.getsockname()[1]}", tmp_path / "state")
        assert f.forward_available() == 2
        got = [parse_5424(rx.recv(70_000)) for _ in range(2)]
    assert [m.seq for m in got] == [1, 3]
    status = f.status()
    assert status["oversize"] == 1 and status["last_seq_sent"] == 3
    assert "too big for one UDP datagram" in status["last_error"]


def test_a_log_started_afresh_is_sent_from_its_start(tmp_path, collectors, forwarders):
    server = collectors()
    path = tmp_path / "log" / "audit.jsonl"
    target = f"tcp://127.0.0.1:{server.port}"
    log = AuditLog(path, fsync=False)
    write_records(log, 20)
    f = forwarders(path, target, tmp_path / "state")
    f.start()
    assert f.flush(WAIT_S)
    log.close()
    shutil.rmtree(path.parent)                   # deleted while the forwarder runs
    log = AuditLog(path, fsync=False)
    write_records(log, 5, start=20)
    f.poke()
    wait_until(lambda: len(server.parsed()) == 25, what="the new log's 5 records")
    assert f.flush(WAIT_S)
    assert f.stop(5.0)
    assert [m.seq for m in server.parsed()] == list(range(1, 21)) + list(range(1, 6))
    assert "started afresh" in f.status()["last_error"]
    # deleted again while no forwarder runs: a log behind the cursor ...
    log.close()
    shutil.rmtree(path.parent)
    log = AuditLog(path, fsync=False)
    write_records(log, 3, start=30)
    assert forwarders(path, target, tmp_path / "state").forward_available() == 3
    # ... and a new log that grew past the cursor (seq 3's hash differs)
    log.close()
    shutil.rmtree(path.parent)
    log = AuditLog(path, fsync=False)
    write_records(log, 7, start=40)
    g = forwarders(path, target, tmp_path / "state")
    assert g.forward_available() == 7
    assert "log replaced" in g.status()["last_error"]
    wait_until(lambda: len(server.parsed()) == 35, what="35 messages")
    assert [m.seq for m in server.parsed()][25:] == [1, 2, 3] + list(range(1, 8))


@needs_rsyslog
def test_the_agent_ships_its_records_to_rsyslog(agent, tmp_path, rsyslog):
    """The real agent with syslog_target: what it logs (start, a quarantine, its stop)
    reaches a real rsyslog, byte for byte, each record once."""
    import builders as b
    a = agent(extra=f'syslog_target = "tcp://127.0.0.1:{rsyslog.tcp_port}"\n'
                    'syslog_facility = "local3"')
    (tmp_path / "Downloads" / "Contract.pdf").write_bytes(b.pe32())
    wait_until(lambda: any(m.msgid == "quarantine" for _, m in rsyslog.received()),
               what="the quarantine record at rsyslog")
    assert a.status()["syslog"]["connected"] is True
    a.stop()
    wait_until(lambda: any(m.msgid == "guard-stopped" for _, m in rsyslog.received()),
               what="the guard-stopped record at rsyslog")
    got = rsyslog.received()
    lines = log_lines(tmp_path / "log" / "audit.jsonl")
    assert [m.msg for _, m in got] == lines                  # all, once, in order, intact
    assert all(m.pri // 8 == 19 for _, m in got)             # local3
