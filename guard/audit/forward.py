"""Ships every audit record to a syslog collector: RFC 5424 over UDP, TCP or TCP+TLS.

Format x destination (STYLE.md 8): ``format_syslog`` and ``format_cef`` make messages,
``SyslogForwarder`` delivers them. One syslog message per record:

    <PRI>1 TIMESTAMP HOSTNAME guard - MSGID [guard@32473 seq="12" hash="..."] MSG

- PRI: the facility (default ``authpriv``) and a severity from the record
  (``severity_of``: failures err, alerts warning, admin actions notice, others info).
- TIMESTAMP: the record's ``@timestamp``; HOSTNAME: the ``hostname`` setting, else the
  record's ``host.hostname``, else this machine's; MSGID: ``event.action``. Header fields
  are cut to RFC 5424's limits, and characters outside printable US-ASCII become ``_``.
- STRUCTURED-DATA ``guard@32473``: ``seq`` and ``hash`` of the chain, so the SIEM can
  drop duplicates and check order and completeness. 32473 is the private enterprise
  number reserved for documentation (RFC 5612); swap it when guard has its own.
- MSG: the record's line exactly as in the log (``fmt="rfc5424"``, canonical JSON,
  ASCII only), or a CEF line (``fmt="cef"``, UTF-8). No BOM: MSG is sent as RFC 5424
  MSG-ANY, which most collectors expect (a BOM often ends up inside the SIEM's text).

Delivery: TCP and TLS use octet-counted framing (RFC 6587 3.4.1, ``LEN SP MSG``), which
rsyslog, syslog-ng and most SIEM collectors read; UDP sends one datagram per record.

Never losing a record: the audit log is the buffer (bounded by its rotation, log_max_mb
x log_keep). A cursor file in ``state_dir`` holds the last record delivered (seq, hash)
and is replaced atomically. The forwarder follows the log from the cursor on and moves
the cursor only once a batch is confirmed: the connection is still open (the peer has
not closed or reset it) at the next check, made before the next batch and at every idle
poll, or the collector closed cleanly after reading everything (stop, one-shot send).
While the collector is down it retries with backoff (0.5 s doubling to 30 s); records
written meanwhile stay in the log and are sent later, in seq order.

Limits:
- At least once, not exactly once: after a connection error the unconfirmed batch is
  sent again, and the collector may already have had some of it. ``seq`` in the
  structured data lets the SIEM drop the duplicates.
- Plain syslog over TCP has no acknowledgement: a collector that crashes after reading
  a batch but before storing it, or a connection that dies silently (no FIN or RST:
  keepalive notices after about 90 s) after the confirming check, loses that batch.
  RELP would close this gap; it is not in the standard library.
- Records rotated out of the log before they were sent are counted as lost
  (``status()["lost"]``, ``on_gap``); the SIEM sees the jump in ``seq`` too.
- UDP is best effort: no confirmation at all, datagrams may be dropped on the way.
  Records over 65,000 bytes are not sent over UDP (counted in ``status()["oversize"]``).
- The collector must accept messages as large as the largest record: rsyslog's
  ``maxMessageSize`` is 8 KB by default; set it to 64k or more.
- DNS lookups and TCP connects block up to ``connect_timeout_s``; ``stop`` returns on
  time, the thread (a daemon thread) ends when that connect gives up.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import re
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from .. import __version__
from ..errors import ConfigError, GuardError
from .verify import iter_records
from .writer import ZERO_HASH, canonical_json, record_seq, reverse_lines, rotated_numbers, \
    rotated_path

SCHEMES = ("udp", "tcp", "tls")
FORMATS = ("rfc5424", "cef")
FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "audit": 13,
    "alert": 14, "clock": 15, **{f"local{i}": 16 + i for i in range(8)},
}
DEFAULT_FACILITY = "authpriv"   # security messages, kept out of world-readable logs
SD_ID = "guard@32473"           # 32473: the documentation enterprise number (RFC 5612)
APP_NAME = "guard"
UDP_MAX_BYTES = 65_000          # below IPv4's 65,507-byte datagram limit
CURSOR_MODE = 0o640
STATE_DIR_MODE = 0o750

# syslog severities (RFC 5424 table 2)
EMERG, ALERT, CRIT, ERR, WARNING, NOTICE, INFO, DEBUG = range(8)

_ERROR_ACTIONS = frozenset({"guard-error", "unparseable-line"})
_WARNING_ACTIONS = frozenset({"break-glass", "exec-timeout", "log-repaired"})
_NOTICE_ACTIONS = frozenset({"restore", "purge", "guard-started", "guard-stopped",
                             "config-reload", "allowlist-reload", "launch-control",
                             "exec-would-deny"})
_CEF_SEVERITY = {EMERG: 10, ALERT: 9, CRIT: 9, ERR: 7, WARNING: 6, NOTICE: 3, INFO: 1,
                 DEBUG: 0}
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})\Z")
_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9._-]*[A-Za-z0-9_])?\Z")
_NOT_PRINTUSASCII = re.compile(r"[^\x21-\x7e]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_BATCH_BYTES = 1024 * 1024
_CLOSE_WAIT_S = 1.0             # for the collector's EOF after ours, on a clean close
_BACKOFF_FIRST_S = 0.5
_BACKOFF_MAX_S = 30.0


class ForwardError(GuardError):
    """A one-shot send (``forward_available``) could not reach the collector or failed."""


# --- targets -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """Where to send: ``scheme`` is udp, tcp or tls; ``host`` a name or IP (no brackets)."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_target(text: str) -> Target:
    """``udp://HOST:PORT``, ``tcp://HOST:PORT`` or ``tls://HOST:PORT`` -> Target.

    IPv6 addresses go in brackets (``tcp://[::1]:514``). Raises ConfigError with a
    one-line message for anything else: no or unknown scheme, no host, no port, a port
    that is not a number in 1-65535, a path, user or query.
    """
    usage = "expected udp://HOST:PORT, tcp://HOST:PORT or tls://HOST:PORT"
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"syslog target is empty: {usage}")
    text = text.strip()
    shown = ascii(text)
    m = re.fullmatch(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", text, re.DOTALL)
    if m is None:
        raise ConfigError(f"syslog target {shown} has no scheme: {usage}")
    scheme, rest = m.group(1).lower(), m.group(2)
    if scheme not in SCHEMES:
        raise ConfigError(f"syslog target {shown}: unknown scheme {scheme!r}: {usage}")
    if any(c in rest for c in "/?#@") or any(c.isspace() for c in rest):
        raise ConfigError(f"syslog target {shown}: only HOST:PORT may follow {scheme}:// "
                          f"(no path, user, query or spaces)")
    port_text: str | None
    if rest.startswith("["):
        host, closed, after = rest[1:].partition("]")
        if not closed or (after and not after.startswith(":")):
            raise ConfigError(f"syslog target {shown}: malformed [IPv6] address")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"syslog target {shown}: {host!r} is not an IPv6 "
                              f"address") from None
        port_text = after[1:] if after else None
    else:
        if rest.count(":") > 1:
            raise ConfigError(f"syslog target {shown}: put an IPv6 address in brackets, "
                              f"e.g. {scheme}://[::1]:514")
        host, colon, port_text = rest.partition(":")
        port_text = port_text if colon else None
        if not host:
            raise ConfigError(f"syslog target {shown} has no host: {usage}")
        if len(host) > 253 or not _HOST_NAME.match(host):
            raise ConfigError(f"syslog target {shown}: {host!r} is not a valid host name")
    if port_text is None:
        default = 6514 if scheme == "tls" else 514
        raise ConfigError(f"syslog target {shown} has no port: add one, e.g. "
                          f"{scheme}://{host if ':' not in host else f'[{host}]'}:{default}")
    if not port_text.isdigit() or not port_text.isascii():
        raise ConfigError(f"syslog target {shown}: port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(f"syslog target {shown}: port {port} is out of range 1-65535")
    return Target(scheme, host, port)


def facility_code(facility: str | int) -> int:
    """A facility name (``authpriv``, ``local0`` ...) or number 0-23 -> its number.

    Raises ConfigError for anything else.
    """
    if isinstance(facility, int) and not isinstance(facility, bool) and 0 <= facility <= 23:
        return facility
    if isinstance(facility, str) and facility.lower() in FACILITIES:
        return FACILITIES[facility.lower()]
    raise ConfigError(f"syslog facility {facility!r} is unknown: use one of "
                      f"{', '.join(FACILITIES)} or a number 0-23")


# --- messages ------------------------------------------------------------------------------

def severity_of(rec: dict[str, Any]) -> int:
    """Syslog severity of a record: err for failures and guard errors, warning for alerts
    (quarantine, exec-denied, would-quarantine) and break-glass/timeouts/log repairs,
    notice for what people or the daemon did (restore, reloads, start/stop), else info."""
    action = _text(_get(rec, "event.action"))
    if action in _ERROR_ACTIONS or _get(rec, "event.outcome") == "failure":
        return ERR
    if _get(rec, "event.kind") == "alert" or action in _WARNING_ACTIONS:
        return WARNING
    category = _get(rec, "event.category")
    if action in _NOTICE_ACTIONS or (isinstance(category, list) and "configuration" in category):
        return NOTICE
    return INFO


def format_syslog(rec: dict[str, Any], msg: bytes, facility: int = FACILITIES["authpriv"],
                  hostname: str | None = None) -> bytes:
    """One RFC 5424 message (no framing) for ``rec`` with ``msg`` as its MSG part."""
    pri = facility * 8 + severity_of(rec)
    stamp = _text(rec.get("@timestamp"))
    stamp = stamp if _TIMESTAMP.match(stamp) else "-"
    host = _header_field(hostname or _text(_get(rec, "host.hostname")) or socket.gethostname(),
                         255)
    msgid = _header_field(_text(_get(rec, "event.action")), 32)
    header = f"<{pri}>1 {stamp} {host} {APP_NAME} - {msgid} {structured_data(rec)}"
    return header.encode("ascii") + (b" " + msg if msg else b"")


def structured_data(rec: dict[str, Any]) -> str:
    """``[guard@32473 seq="12" hash="..."]`` from the record's chain, or ``-`` without one."""
    chain = rec.get("guard")
    if not isinstance(chain, dict):
        return "-"
    params = [f'{name}="{sd_escape(_text(chain[name]))}"' for name in ("seq", "hash")
              if chain.get(name) not in (None, "")]
    return f"[{SD_ID} {' '.join(params)}]" if params else "-"


def sd_escape(value: str) -> str:
    """An RFC 5424 PARAM-VALUE: ``"``, ``\\`` and ``]`` escaped with a backslash."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def frame_octet_counted(msg: bytes) -> bytes:
    """RFC 6587 octet-counting frame: ``LEN SP MSG``."""
    return b"%d " % len(msg) + msg


def format_cef(rec: dict[str, Any], version: str = __version__) -> str:
    """The record as one ArcSight CEF line (for ArcSight, Splunk, QRadar ...).

    ``CEF:0|guard|guard|VERSION|event.action|event.reason or message|SEVERITY|EXT``.
    Header fields escape ``\\`` and ``|``; extension values escape ``\\`` and ``=``, and
    carry newlines as ``\\n``/``\\r``. Other control characters become spaces (headers
    may not hold newlines at all). Field lengths are not cut: the record in the audit log
    stays the reference, CEF is a summary of it.
    """
    action = _text(_get(rec, "event.action")) or "unknown"
    name = (_text(_get(rec, "event.reason")) or _text(rec.get("message"))
            or _text(_get(rec, "error.message")) or action)
    header = ["guard", "guard", version, action, name, str(cef_severity(rec))]
    ext = [f"{key}={cef_value_escape(value)}" for key, value in _cef_extension(rec)]
    return "CEF:0|" + "|".join(cef_header_escape(h) for h in header) + "|" + " ".join(ext)


def cef_severity(rec: dict[str, Any]) -> int:
    """CEF severity 0-10: from ``severity_of``; an alert on a malicious file is 8."""
    sev = severity_of(rec)
    if sev == WARNING and _get(rec, "guard.verdict") == "malicious":
        return 8
    return _CEF_SEVERITY[sev]


def cef_header_escape(value: str) -> str:
    """A CEF header field: ``\\`` -> ``\\\\``, ``|`` -> ``\\|``, control characters -> space."""
    return _CONTROL.sub(" ", value.replace("\\", "\\\\").replace("|", "\\|"))


def cef_value_escape(value: str) -> str:
    """A CEF extension value: ``\\``, ``=`` escaped; newlines as ``\\n`` and ``\\r``."""
    value = value.replace("\\", "\\\\").replace("=", "\\=")
    value = value.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\r")
    return _CONTROL.sub(" ", value)


def _cef_extension(rec: dict[str, Any]) -> Iterable[tuple[str, str]]:
    """(key, text) pairs for the fields present, ``csN``/``cnN`` with their labels."""
    rt = _epoch_ms(_text(rec.get("@timestamp")))
    plain = [
        ("rt", str(rt) if rt is not None else ""),
        ("cat", _text(_get(rec, "event.kind"))),
        ("act", _text(_get(rec, "event.action"))),
        ("outcome", _text(_get(rec, "event.outcome"))),
        ("reason", _text(_get(rec, "event.reason"))),
        ("msg", _text(rec.get("message")) or _text(_get(rec, "error.message"))),
        ("fname", _text(_get(rec, "file.name"))),
        ("filePath", _text(_get(rec, "file.path"))),
        ("fileHash", _text(_get(rec, "file.hash.sha256"))),
        ("fsize", _text(_get(rec, "file.size"))),
        ("fileType", _text(_get(rec, "file.mime_type"))),
        ("suser", _text(_get(rec, "user.name"))),
        ("spid", _text(_get(rec, "process.pid"))),
        ("sproc", _text(_get(rec, "process.name"))),
        ("request", _text(_get(rec, "url.original"))),
        ("dhost", _text(_get(rec, "host.hostname"))),
    ]
    labelled = [
        ("cs1", "rule", _text(_get(rec, "rule.name"))),
        ("cs2", "verdict", _text(_get(rec, "guard.verdict"))),
        ("cs3", "quarantineId", _text(_get(rec, "guard.quarantine_id"))),
        ("cs4", "reasonCodes", _text(_get(rec, "guard.codes"))),
        ("cs5", "mode", _text(_get(rec, "guard.mode"))),
        ("cs6", "chainHash", _text(_get(rec, "guard.hash"))),
        ("cn1", "seq", _text(_get(rec, "guard.seq"))),
    ]
    for key, value in plain:
        if value:
            yield key, value
    for key, label, value in labelled:
        if value:
            yield f"{key}Label", label
            yield key, value


def _get(rec: dict[str, Any], dotted: str) -> Any:
    value: Any = rec
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _text(value: Any) -> str:
    """A field as text: "" for None and containers of containers, lists joined by commas."""
    if value is None or isinstance(value, dict):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_text(v) for v in value if not isinstance(v, (list, dict)))
    return str(value)


def _header_field(value: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII, at most ``limit`` chars, or ``-``."""
    value = _NOT_PRINTUSASCII.sub("_", value)[:limit]
    return value or "-"


def _epoch_ms(stamp: str) -> int | None:
    try:
        when = dt.datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp() * 1000)


# --- the cursor ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Cursor:
    """A position in the log: after the record ``seq`` (with chain ``hash``) and the
    ``extra`` lines without a seq that followed it. ``seq`` 0: before the first record."""

    seq: int = 0
    hash: str = ""
    extra: int = 0


def read_cursor(path: Path) -> Cursor | None:
    """The cursor saved at ``path``; None when there is none. Raises ValueError when the
    file is not a cursor, OSError when it cannot be read."""
    try:
        data = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        return None
    if not (isinstance(data, dict) and type(data.get("seq")) is int and data["seq"] >= 0
            and isinstance(data.get("hash", ""), str)
            and type(data.get("extra", 0)) is int and data.get("extra", 0) >= 0):
        raise ValueError("not a forwarder cursor")
    return Cursor(data["seq"], data.get("hash", ""), data.get("extra", 0))


def write_cursor(path: Path, cursor: Cursor, target: str = "") -> None:
    """Save ``cursor`` atomically (tmp file, fsync, rename, fsync of the folder)."""
    path = Path(path)
    if not path.parent.is_dir():
        path.parent.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    body = canonical_json({"seq": cursor.seq, "hash": cursor.hash, "extra": cursor.extra,
                           "target": target}).encode("ascii") + b"\n"
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, CURSOR_MODE)
    try:
        os.write(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def newest_seq(log_file: Path) -> int | None:
    """Seq of the newest record in the log (current file, else the rotated ones); cheap:
    reads from the end. None when the log has no record."""
    log_file = Path(log_file)
    for f in [log_file] + [rotated_path(log_file, n) for n in rotated_numbers(log_file)]:
        try:
            for line in reverse_lines(f):
                seq = record_seq(line)
                if seq is not None:
                    return seq
        except OSError:
            continue
    return None


# --- the forwarder -------------------------------------------------------------------------

@dataclass
class _Item:
    seq: int | None
    payload: bytes      # the syslog message, not framed
    pos: Cursor         # the cursor once this item is delivered


class _Stopped(Exception):
    """stop() was called: unwind out of the log follower."""


class _Restart(Exception):
    """The log was replaced beneath the read position: read it again from the start."""


class _Dead(OSError):
    """The collector closed or reset the connection."""


class _Backoff:
    def __init__(self) -> None:
        self.delay_s = _BACKOFF_FIRST_S

    def next(self) -> float:
        delay, self.delay_s = self.delay_s, min(self.delay_s * 2, _BACKOFF_MAX_S)
        return delay

    def reset(self) -> None:
        self.delay_s = _BACKOFF_FIRST_S


class SyslogForwarder:
    """Follows the audit log and delivers every record to one syslog collector.

    ``start()`` runs it on a daemon thread that never raises: errors go to
    ``status()["last_error"]``. ``forward_available()`` is the one-shot form for tests
    and the CLI.

    Polling: every ``poll_s`` while records keep coming; when none came, the wait
    doubles up to ``idle_poll_s`` (each wake reads the log and polls the socket: a
    fixed 0.2 s poll alone would cost ~0.1 % CPU). ``poke()`` wakes it at once: the
    daemon calls it after each ``AuditLog.write``, so its records go out without delay.

    The cursor file is per target (``state_dir/syslog-<scheme>-<host>-<port>.cursor``):
    a new target gets everything still in the log; delete the file to send it all again.

    Args: ``fmt`` "rfc5424" (MSG = the JSON line) or "cef"; ``facility`` a name or
    number; ``tls_ca`` the CA file that signed the collector's certificate (else the
    system's CAs); ``tls_cert``/``tls_key`` a client certificate; ``tls_verify=False``
    skips certificate and host name checks (tests, never production); ``hostname``
    overrides the records' host name in the header; ``on_gap(first, last)`` is called on
    the forwarder's thread when records ``first``..``last`` were rotated out unsent.

    Raises ConfigError for a bad target, format, facility or TLS file, or TLS settings
    on a target that is not tls://.
    """

    def __init__(self, log_file: Path, target: str | Target, state_dir: Path, *,
                 fmt: str = "rfc5424", facility: str | int = DEFAULT_FACILITY,
                 tls_ca: Path | None = None, tls_cert: Path | None = None,
                 tls_key: Path | None = None, tls_verify: bool = True,
                 hostname: str | None = None, connect_timeout_s: float = 5.0,
                 send_timeout_s: float = 30.0, poll_s: float = 0.2,
                 idle_poll_s: float = 2.0, batch_records: int = 500,
                 on_gap: Callable[[int, int], None] | None = None) -> None:
        self.log_file = Path(log_file)
        self.target = target if isinstance(target, Target) else parse_target(target)
        if fmt not in FORMATS:
            raise ConfigError(f"syslog format {fmt!r} is unknown: use rfc5424 or cef")
        if min(connect_timeout_s, send_timeout_s, poll_s, idle_poll_s, batch_records) <= 0:
            raise ConfigError("syslog timeouts, poll intervals and batch_records must be "
                              "more than 0")
        self.fmt = fmt
        self.facility = facility_code(facility)
        self.hostname = hostname or None
        self.connect_timeout_s = connect_timeout_s
        self.send_timeout_s = send_timeout_s
        self.poll_s = poll_s
        self.idle_poll_s = max(idle_poll_s, poll_s)
        self.batch_records = batch_records
        self.on_gap = on_gap
        if self.target.scheme == "tls":
            self._tls: ssl.SSLContext | None = _tls_context(tls_ca, tls_cert, tls_key,
                                                            tls_verify)
        else:
            if tls_ca or tls_cert or tls_key:
                raise ConfigError(f"syslog TLS files are set but the target {self.target} "
                                  f"is not tls://")
            self._tls = None
        safe_host = re.sub(r"[^A-Za-z0-9.-]", "_", self.target.host)
        self.cursor_file = Path(state_dir) / (f"syslog-{self.target.scheme}-{safe_host}-"
                                              f"{self.target.port}.cursor")
        self._lock = threading.Lock()           # guards the counters status() reads
        self._run_lock = threading.Lock()       # one delivery loop at a time
        self._stop = threading.Event()
        self._wake = threading.Event()          # poke(): records were written
        self._active = False                    # records came since the last wait
        self._interval_s = poll_s
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._poller: Any = None
        self._backoff = _Backoff()
        self._next_connect = 0.0
        self._batch: list[_Item] = []
        self._unconfirmed = 0                   # items at the front of _batch already sent
        self._new_bytes = 0                     # payload bytes of the items not yet sent
        self._cursor = Cursor()                 # delivered and saved
        self._cursor_known = False              # a cursor file existed or was written
        self._pos = Cursor()                    # the last item admitted into _batch
        self._past = True                       # read-position filter, see _admit
        self._skip = 0
        self._seen_seq = False
        self._state = "stopped"
        self._counts = {"sent": 0, "resent": 0, "errors": 0, "gaps": 0, "lost": 0,
                        "oversize": 0}
        self._last_error: str | None = None
        self._last_gap: tuple[int, int] | None = None

    # -- public --

    def start(self) -> None:
        """Start the forwarding thread (daemon=True). Idempotent while it runs."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._wake.clear()
        self._thread = threading.Thread(target=self._run, name="guard-syslog-forward",
                                        daemon=True)
        self._state = "starting"
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Stop the thread; returns whether it ended within ``timeout_s``.

        A batch still unconfirmed is confirmed by a clean close (our FIN, the collector's
        EOF) when the collector answers within 1 s, else it is sent again next time. A
        send blocked on a collector that does not read is cut off by shutting the socket
        down, so this returns promptly whatever the collector does.
        """
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is None:
            return True
        deadline = time.monotonic() + timeout_s
        grace = min(timeout_s / 4, 0.25) if self._state == "sending" else \
            max(timeout_s - 0.25, 0.0)
        thread.join(grace)
        if thread.is_alive():
            self._interrupt()
            thread.join(max(deadline - time.monotonic(), 0.0))
        return not thread.is_alive()

    def flush(self, timeout_s: float = 2.0) -> bool:
        """Wait until every record now in the log is delivered (cursor moved past it);
        returns whether that happened within ``timeout_s``. For the daemon's shutdown:
        write the last record, ``flush()``, then ``stop()``. Needs the thread running."""
        newest = newest_seq(self.log_file)
        deadline = time.monotonic() + timeout_s
        while newest is not None:
            with self._lock:
                if self._cursor.seq >= newest:
                    break
            if time.monotonic() >= deadline or self._thread is None or \
                    not self._thread.is_alive():
                return False
            self._wake.set()
            time.sleep(0.02)
        return True

    def poke(self) -> None:
        """Read the log now (new records were written). Cheap, thread-safe, never blocks."""
        self._wake.set()

    def status(self) -> dict[str, Any]:
        """A snapshot: target, format, running, state, connected, sent (records delivered,
        each counted once), resent, last_seq_sent (the cursor), backlog (records in the
        log after the cursor, None when unknown), errors, last_error, gaps, lost,
        last_gap, oversize, cursor_file."""
        newest = newest_seq(self.log_file)
        with self._lock:
            out: dict[str, Any] = {
                "target": str(self.target), "format": self.fmt,
                "running": self._thread is not None and self._thread.is_alive(),
                "state": self._state, "connected": self._sock is not None,
                **self._counts, "last_seq_sent": self._cursor.seq,
                "last_error": self._last_error,
                "last_gap": list(self._last_gap) if self._last_gap else None,
                "cursor_file": str(self.cursor_file),
            }
            out["backlog"] = None if newest is None else max(newest - self._cursor.seq, 0)
        return out

    def forward_available(self) -> int:
        """Send what the log holds after the cursor now; returns how many records were
        delivered (confirmed and the cursor moved).

        Synchronous: for tests and a one-shot CLI. Closes the connection cleanly at the
        end and confirms the last batch by the collector's EOF. Raises ForwardError when
        the collector cannot be reached or a send fails (the cursor keeps what was
        confirmed), RuntimeError while the thread runs.
        """
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("forward_available() while the forwarding thread runs")
        with self._run_lock:
            before = self._counts["sent"]
            self._stop.clear()
            self._load_cursor()
            try:
                for _ in range(2):              # a second pass only after _Restart
                    try:
                        self._read_into_batch(follow=False)
                        break
                    except _Restart:
                        continue
                if self._batch[self._unconfirmed:]:
                    self._send_new()
                self._close(clean=True)
            except OSError as e:
                self._note_error(f"{self.target}: {_describe(e)}")
                self._drop()
                raise ForwardError(f"{self.target}: {_describe(e)}") from e
            finally:
                self._batch.clear()
                self._unconfirmed = self._new_bytes = 0
                self._state = "stopped"
            return self._counts["sent"] - before

    # -- the thread --

    def _run(self) -> None:
        with self._run_lock:
            try:
                self._load_cursor()
                while not self._stop.is_set():
                    try:
                        self._read_into_batch(follow=True)
                    except _Stopped:
                        break
                    except _Restart:
                        continue
                    except Exception as e:  # a bug or an unreadable log: never die
                        self._note_error(f"forwarder: {type(e).__name__}: {e}")
                        if self._stop.wait(self._backoff.next()):
                            break
            except Exception as e:  # pragma: no cover - last resort, the thread never raises
                self._note_error(f"forwarder: {type(e).__name__}: {e}")
            finally:
                try:
                    self._close(clean=True)
                except Exception as e:  # pragma: no cover
                    self._note_error(f"forwarder: closing: {e}")
                self._batch.clear()
                self._unconfirmed = self._new_bytes = 0
                self._state = "stopped"

    def _read_into_batch(self, follow: bool) -> None:
        """One pass over the log from the read position; batches go out as they fill,
        and (following) whenever the log is caught up."""
        self._start_pass()
        after = self._pos.seq - 1 if self._pos.seq > 0 else None
        # poll_s=0: _idle does the waiting (on the wake event), iter_records only checks stop
        records = iter_records(self.log_file, follow=follow, poll_s=0.0,
                               stop=self._stop if follow else None, after_seq=after,
                               on_idle=self._idle if follow else None)
        with contextlib.closing(records):
            for rec in records:
                self._active = True
                item = self._admit(rec)
                if item is None:
                    continue
                self._batch.append(item)
                self._new_bytes += len(item.payload)
                if len(self._batch) - self._unconfirmed >= self.batch_records or \
                        self._new_bytes >= _BATCH_BYTES:
                    if follow:
                        self._deliver()
                    else:
                        self._send_new()

    def _start_pass(self) -> None:
        """Reset the read filter at the read position; a log now behind the position was
        started afresh (deleted, reinstalled): read it from its start."""
        if self._pos.seq > 0:
            newest = newest_seq(self.log_file)
            if newest is None or newest < self._pos.seq:
                self._note_error(f"{self.log_file}: the log ends at seq {newest or 0}, "
                                 f"before seq {self._pos.seq} already read: sending it "
                                 f"from its start (log started afresh)")
                self._pos = Cursor()
        self._past = self._pos.seq == 0
        self._skip = self._pos.extra if self._past else 0
        self._seen_seq = False

    def _admit(self, rec: dict[str, Any]) -> _Item | None:
        """The item for a record after the read position, else None (already read).

        Records come in seq order (``iter_records``); lines without a seq are placed by
        the records around them. Reports seqs missing after the position as lost.
        """
        chain = rec.get("guard")
        seq = chain.get("seq") if isinstance(chain, dict) else None
        if type(seq) is not int:
            if not self._past:
                return None
            if self._skip > 0:
                self._skip -= 1
                return None
            self._pos = Cursor(self._pos.seq, self._pos.hash, self._pos.extra + 1)
            return self._item(rec, None)
        assert isinstance(chain, dict)
        digest = _text(chain.get("hash"))
        if seq == 1 and chain.get("prev") == ZERO_HASH and self._seen_seq:
            self._note_error(f"{self.log_file}: the log started afresh at seq 1 after "
                             f"seq {self._pos.seq}")
            self._pos, self._past, self._skip = Cursor(), True, 0
        self._seen_seq = True
        floor = self._pos.seq
        if not self._past:
            if seq < floor:
                return None
            if seq == floor:
                if self._pos.hash and digest != self._pos.hash:
                    self._note_error(f"{self.log_file}: record {seq} is not the one "
                                     f"already read (log replaced): sending it from its "
                                     f"start")
                    self._pos = Cursor()
                    raise _Restart()
                self._past, self._skip = True, self._pos.extra
                return None
            self._past, self._skip = True, 0     # the record at the position is gone
        elif seq <= floor:
            return None
        # The writer counts lines without a seq (garbage) towards seq: not lost records.
        first_missing = floor + 1 + self._pos.extra
        if seq > first_missing and (floor > 0 or self._cursor_known):
            self._gap(first_missing, seq - 1)
        self._pos = Cursor(seq, digest, 0)
        return self._item(rec, seq)

    def _item(self, rec: dict[str, Any], seq: int | None) -> _Item:
        raw = getattr(rec, "raw", None)
        if self.fmt == "cef":
            msg = format_cef(rec).encode("utf-8", "replace")
        else:
            msg = raw if isinstance(raw, bytes) else canonical_json(rec).encode("ascii")
        return _Item(seq, format_syslog(rec, msg, self.facility, self.hostname), self._pos)

    def _idle(self) -> None:
        """Called by the log follower when caught up: send, confirm, then wait for a poke
        or the poll interval (this is the only wait of the follow loop: never skip it)."""
        if self._stop.is_set():
            raise _Stopped()
        self._idle_work()
        if self._active:
            self._interval_s, self._active = self.poll_s, False
        else:
            self._interval_s = min(self._interval_s * 2, self.idle_poll_s)
        self._wake.wait(self._interval_s)
        self._wake.clear()

    def _idle_work(self) -> None:
        """Send what is pending, confirm what was sent, keep the link status true."""
        if len(self._batch) > self._unconfirmed:
            self._deliver()
            return
        if self._sock is None:
            if time.monotonic() >= self._next_connect:
                try:
                    self._connect()
                    self._backoff.reset()
                except OSError as e:
                    self._note_error(f"{self.target}: {_describe(e)}")
                    self._next_connect = time.monotonic() + self._backoff.next()
            return
        self._state = "idle"
        if self.target.scheme == "udp":
            return
        if self._alive():
            if self._unconfirmed:
                self._commit(self._unconfirmed)
            return
        self._note_error(f"{self.target}: the collector closed the connection")
        self._drop()
        if self._batch:
            self._deliver()

    def _deliver(self) -> None:
        """Send the unsent items, retrying with backoff until done; raises _Stopped."""
        while True:
            if self._stop.is_set():
                raise _Stopped()
            try:
                self._send_new()
                self._backoff.reset()
                return
            except OSError as e:
                self._note_error(f"{self.target}: {_describe(e)}")
                self._drop()
                self._state = "backoff"
                if self._stop.wait(self._backoff.next()):
                    raise _Stopped()

    def _send_new(self) -> None:
        """Confirm what was sent before (the link is alive), then send the rest; raises
        OSError (``_Dead`` when the collector went away)."""
        if self._sock is None:
            self._connect()
        assert self._sock is not None
        udp = self.target.scheme == "udp"
        if not udp:
            if not self._alive():
                raise _Dead("the collector closed the connection")
            if self._unconfirmed:
                self._commit(self._unconfirmed)
        new = self._batch[self._unconfirmed:]
        if not new:
            return
        self._state = "sending"
        if udp:
            self._send_datagrams(new)
        else:
            self._sock.sendall(b"".join(frame_octet_counted(i.payload) for i in new))
            self._unconfirmed = len(self._batch)
        self._new_bytes = 0
        self._state = "connected"

    def _send_datagrams(self, items: list[_Item]) -> None:
        """UDP: one datagram each, delivered (as far as UDP tells) as soon as sent."""
        assert self._sock is not None
        done = unsent = 0
        try:
            for item in items:
                if len(item.payload) > UDP_MAX_BYTES:
                    unsent += 1
                    with self._lock:
                        self._counts["oversize"] += 1
                    self._note_error(f"{self.target}: record {item.seq} is "
                                     f"{len(item.payload)} bytes, too big for one UDP "
                                     f"datagram: not sent (use tcp:// or tls://)")
                else:
                    self._sock.send(item.payload)
                done += 1
        finally:
            if done:
                self._commit(done, unsent)

    # -- connection --

    def _connect(self) -> None:
        """Open the connection (TLS handshake included); raises OSError."""
        self._state = "connecting"
        t = self.target
        if t.scheme == "udp":
            family, kind, proto, _, addr = socket.getaddrinfo(t.host, t.port, 0,
                                                              socket.SOCK_DGRAM)[0]
            sock = socket.socket(family, kind, proto)
            try:
                sock.connect(addr)
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection((t.host, t.port), timeout=self.connect_timeout_s)
            try:
                _keepalive(sock)
                if self._tls is not None:
                    sock = self._tls.wrap_socket(sock, server_hostname=t.host)
            except OSError:
                sock.close()
                raise
        sock.settimeout(self.send_timeout_s)
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        self._sock, self._poller = sock, poller
        self._state = "connected"

    def _alive(self) -> bool:
        """Whether the collector still holds the connection: nothing to read (a syslog
        collector sends nothing), or only data (TLS tickets); not EOF, reset or error."""
        sock = self._sock
        if sock is None:
            return False
        try:
            events = self._poller.poll(0)
        except (OSError, ValueError):
            return False
        if not events:
            return True
        if not events[0][1] & select.POLLIN:
            return False                        # POLLERR or POLLHUP alone
        sock.settimeout(0.0)
        try:
            while True:
                try:
                    data = sock.recv(4096)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError,
                        InterruptedError):
                    return True
                except (OSError, ValueError):
                    return False
                if not data:
                    return False
        finally:
            with contextlib.suppress(OSError, ValueError):
                sock.settimeout(self.send_timeout_s)

    def _commit(self, n: int, unsent: int = 0) -> None:
        """The first ``n`` items are delivered (but ``unsent`` of them, too big for UDP,
        were passed over): move and save the cursor."""
        items, self._batch = self._batch[:n], self._batch[n:]
        self._unconfirmed = max(self._unconfirmed - n, 0)
        cursor = items[-1].pos
        with self._lock:
            self._cursor = cursor
            self._counts["sent"] += n - unsent
        try:
            write_cursor(self.cursor_file, cursor, str(self.target))
            self._cursor_known = True
        except OSError as e:
            self._note_error(f"{self.cursor_file}: cannot save the cursor: {_describe(e)} "
                             f"(records may be sent again after a restart)")

    def _drop(self) -> None:
        """Close at once after an error; what was sent unconfirmed will be sent again."""
        sock, self._sock, self._poller = self._sock, None, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        if self._unconfirmed:
            with self._lock:
                self._counts["resent"] += self._unconfirmed
            self._unconfirmed = 0
        self._new_bytes = sum(len(i.payload) for i in self._batch)

    def _close(self, clean: bool) -> None:
        """Close the connection. Clean (TCP/TLS): send FIN and wait up to 1 s for the
        collector's EOF, which means it read everything: that confirms the last batch."""
        sock = self._sock
        if sock is None:
            return
        if not clean or self.target.scheme == "udp" or not self._alive():
            self._drop()
            return
        eof = False
        if isinstance(sock, ssl.SSLSocket):
            # Send close_notify without waiting for the collector's (non-blocking unwrap).
            with contextlib.suppress(OSError, ValueError):
                sock.settimeout(0.0)
                sock.unwrap()
        try:
            socket.socket.shutdown(sock, socket.SHUT_WR)
            deadline = time.monotonic() + _CLOSE_WAIT_S
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                socket.socket.settimeout(sock, left)
                if not socket.socket.recv(sock, 4096):   # raw bytes: only EOF matters
                    eof = True
                    break
        except OSError:
            pass
        if eof and self._unconfirmed:
            self._commit(self._unconfirmed)
        self._drop()

    def _interrupt(self) -> None:
        """From stop(): make a blocked send or read on the socket return at once."""
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    # -- bookkeeping --

    def _load_cursor(self) -> None:
        try:
            cursor = read_cursor(self.cursor_file)
        except (OSError, ValueError) as e:
            self._note_error(f"{self.cursor_file}: unreadable cursor ({e}): sending the "
                             f"whole log again")
            cursor = None
        with self._lock:
            self._cursor = cursor or Cursor()
        self._cursor_known = cursor is not None
        self._pos = self._cursor

    def _gap(self, first: int, last: int) -> None:
        with self._lock:
            self._counts["gaps"] += 1
            self._counts["lost"] += last - first + 1
            self._last_gap = (first, last)
        self._note_error(f"{self.log_file}: records {first}-{last} were rotated out of the "
                         f"log before they could be sent ({last - first + 1} lost)")
        if self.on_gap is not None:
            try:
                self.on_gap(first, last)
            except Exception as e:
                self._note_error(f"on_gap: {type(e).__name__}: {e}")

    def _note_error(self, message: str) -> None:
        with self._lock:
            self._counts["errors"] += 1
            self._last_error = message


def _tls_context(ca: Path | None, cert: Path | None, key: Path | None,
                 verify: bool) -> ssl.SSLContext:
    """Client context, TLS 1.2+: trust only ``ca`` when given, else the system's CAs."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if ca:
            ctx.load_verify_locations(cafile=str(ca))
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    except OSError as e:
        raise ConfigError(f"cannot load the syslog TLS CA: {_describe(e)}",
                          path=str(ca)) from None
    if key and not cert:
        raise ConfigError("syslog TLS key given without a client certificate",
                          path=str(key))
    if cert:
        try:
            ctx.load_cert_chain(str(cert), str(key) if key else None)
        except OSError as e:
            raise ConfigError(f"cannot load the syslog TLS client certificate or key: "
                              f"{_describe(e)}", path=str(cert)) from None
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _keepalive(sock: socket.socket) -> None:
    """Notice a silently dead connection after ~90 s idle (60 s, then 3 probes 10 s apart)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def _describe(e: BaseException) -> str:
    """One line for an OS, socket or TLS error."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS certificate refused: {e.verify_message or e.reason or e}"
    if isinstance(e, ssl.SSLError):
        return f"TLS error: {e.reason or e}"
    if isinstance(e, socket.timeout):
        return "timed out"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve host: {e.strerror or e}"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


__all__ = ["Cursor", "DEFAULT_FACILITY", "FACILITIES", "ForwardError", "SyslogForwarder",
           "Target", "cef_severity", "facility_code", "format_cef", "format_syslog",
           "frame_octet_counted", "newest_seq", "parse_target", "read_cursor",
           "sd_escape", "severity_of", "structured_data", "write_cursor"]
