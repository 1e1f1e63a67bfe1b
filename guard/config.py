"""Config: load, validate and default the TOML configuration.

One dataclass, built from (in order of precedence) a file named with ``--config`` or
``GUARD_CONFIG``, the per-OS default path, or the embedded default. Validation errors
name the file and, when it can be found, the line of the offending key.
"""

from __future__ import annotations

import os
import platform
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import ConfigError
from .verdict import FailMode, Mode

MODES = tuple(m.value for m in Mode)
PARTIAL_SUFFIXES = (".crdownload", ".part", ".download", ".partial", ".tmp", ".opdownload",
                    ".!ut", ".filepart")
DEFAULT_EXCLUDES = ("*/.git/*", "*/node_modules/*", "*/.cache/*", "*/__pycache__/*",
                    "*/Dropbox/.dropbox.cache/*", "*/.Trash*/*", "*/.venv/*")
DEFAULT_MEETING_APPS = ("zoom", "zoom.us", "cpthost", "caphost", "ms-teams", "teams",
                        "msteams", "webex", "webexmeetings", "ciscowebexstart", "slack",
                        "discord", "gotomeeting", "skype", "facetime", "whereby", "around")


@dataclass(frozen=True)
class WatchFolder:
    path: Path
    source: str = "browser"


@dataclass(frozen=True)
class Config:
    mode: Mode = Mode.ENFORCE
    quarantine_dir: Path = Path("/var/lib/guard/quarantine")
    log_file: Path = Path("/var/log/guard/audit.jsonl")
    allowlist: Path = Path("/etc/guard/allowlist.toml")
    rules: tuple[Path, ...] = ()
    watch: tuple[WatchFolder, ...] = ()
    exclude: tuple[str, ...] = DEFAULT_EXCLUDES
    state_dir: Path = Path("/var/lib/guard")
    # pipeline
    workers: int = 2
    queue_size: int = 10_000
    settle_s: float = 0.5           # a file unchanged this long is complete (no close event)
    sweep_interval_s: float = 300.0
    max_size_mb: float = 100.0
    yara_timeout_s: float = 10.0
    quarantine_suspicious: bool = False
    log_clean: bool = False         # also log a record for every clean file scanned
    log_max_mb: float = 50.0
    log_keep: int = 10
    # records are HMAC-chained with a key only the agent's user can read (made on first
    # start), so a rewrite from any record on is detected: `guard log verify`
    log_signing: bool = True
    log_key_file: Path | None = None     # default: state_dir/audit.key
    # parsers (libmagic, pefile, olevba, archive readers, YARA) run in worker processes,
    # each scan under a budget; a file over budget is "limit-exceeded", never clean
    parser_isolation: bool = True
    parser_cpu_s: float = 30.0
    parser_memory_mb: float = 1024.0   # on top of the file's own size
    parser_wall_s: float = 60.0
    parser_idle_s: float = 60.0      # an idle worker exits after this (memory back)
    # launch control
    launch_control: str = "auto"    # auto | fanotify | monitor | off
    decision_timeout_s: float = 1.0
    fail_mode: FailMode = FailMode.OPEN   # open: allow when undecided in time; closed: deny
    launch_extra_paths: tuple[Path, ...] = ()
    process_poll_s: float = 0.1
    break_glass_file: Path = Path("/var/lib/guard/break-glass")
    # people
    notify: str = "auto"            # auto | none | file:PATH (tests, kiosks)
    meeting_apps: tuple[str, ...] = DEFAULT_MEETING_APPS
    meeting_linger_s: float = 900.0
    meeting_poll_s: float = 2.0
    # SIEM: every audit record to a syslog collector (RFC 5424; CEF message optional)
    syslog_target: str = ""         # udp://host:514 | tcp://host:514 | tls://host:6514
    syslog_format: str = "rfc5424"  # rfc5424 (the ECS JSON as message) | cef
    syslog_facility: str = "authpriv"
    syslog_tls_ca: Path | None = None
    syslog_tls_cert: Path | None = None
    syslog_tls_key: Path | None = None
    syslog_tls_verify: bool = True
    # fleet allowlist: a signed bundle pulled from a URL, applied only when newer
    allowlist_url: str = ""
    allowlist_pubkeys: tuple[Path, ...] = ()
    allowlist_pull_s: float = 300.0
    allowlist_ca_file: Path | None = None
    source: str = "<embedded default>"   # where this config came from

    @property
    def audit_key_path(self) -> Path | None:
        """Where the audit log's HMAC key lives; None when log_signing is off."""
        if not self.log_signing:
            return None
        return self.log_key_file or self.state_dir / "audit.key"


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def default_config_path(system: str | None = None) -> Path:
    system = system or platform.system()
    if system == "Windows":
        return Path(os.environ.get("ProgramData", r"C:\ProgramData")) / "guard" / "config.toml"
    if system == "Darwin":
        return Path("/Library/Application Support/guard/config.toml") if is_root() else \
            Path.home() / "Library" / "Application Support" / "guard" / "config.toml"
    if is_root():
        return Path("/etc/guard/config.toml")
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "guard" / "config.toml"


def _default_paths() -> dict[str, Path]:
    """Where state lives: system paths for the root agent, per-user paths otherwise."""
    if is_root() and platform.system() == "Linux":
        return {"quarantine_dir": Path("/var/lib/guard/quarantine"),
                "log_file": Path("/var/log/guard/audit.jsonl"),
                "allowlist": Path("/etc/guard/allowlist.toml"),
                "state_dir": Path("/var/lib/guard"),
                "break_glass_file": Path("/var/lib/guard/break-glass")}
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "guard"
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "guard"
    conf = default_config_path().parent
    return {"quarantine_dir": data / "quarantine", "log_file": state / "audit.jsonl",
            "allowlist": conf / "allowlist.toml", "state_dir": state,
            "break_glass_file": state / "break-glass"}


def embedded_default() -> Config:
    """Works with no file: watch the user's download folder and the chat apps' folders
    that exist, enforce mode, bundled rules."""
    from .folders import existing, known_folders

    if is_root() and platform.system() == "Linux":
        # The system agent guards every person on the machine, not root's own folders.
        watches = [WatchFolder(Path(kf.path), _first_source(kf))
                   for home in user_homes() for kf in existing(known_folders(home=home))]
        if watches:
            return Config(**_default_paths(), watch=tuple(dict.fromkeys(watches)))
    folders = known_folders()
    watches = [WatchFolder(Path(kf.path), _first_source(kf)) for kf in existing(folders)]
    if not any(w.source == "browser" for w in watches) and folders:
        # The browser download folder is watched even before a browser creates it; the
        # agent creates it at start (see Daemon.start).
        downloads = next((kf for kf in folders if "browser" in getattr(kf, "sources", ())),
                         folders[0])
        watches.insert(0, WatchFolder(Path(downloads.path), "browser"))
    return Config(**_default_paths(), watch=tuple(watches))


def user_homes(passwd: Iterable[Any] | None = None, login_defs: str = "/etc/login.defs"
               ) -> list[Path]:
    """Home folders of the machine's people: accounts with a UID in the login range
    (UID_MIN..UID_MAX of login.defs, default 1000..60000), a login shell and a home that
    exists. Their existing download and chat folders are what the root agent watches."""
    import pwd
    lo, hi = 1000, 60000
    try:
        for line in open(login_defs, encoding="utf-8", errors="replace"):
            parts = line.split()
            if len(parts) == 2 and parts[0] in ("UID_MIN", "UID_MAX") and parts[1].isdigit():
                lo, hi = (int(parts[1]), hi) if parts[0] == "UID_MIN" else (lo, int(parts[1]))
    except OSError:
        pass
    homes = []
    for pw in (passwd if passwd is not None else pwd.getpwall()):
        if not lo <= pw.pw_uid <= hi or pw.pw_shell.endswith(("nologin", "/false")):
            continue
        if pw.pw_dir and os.path.isdir(pw.pw_dir) and pw.pw_dir != "/":
            homes.append(Path(pw.pw_dir))
    return sorted(set(homes))


def _first_source(kf: Any) -> str:
    sources = getattr(kf, "sources", None)
    if sources:
        return sources[0]
    return getattr(kf, "source", "browser")


def load_config(path: str | os.PathLike[str] | None = None,
                env: Mapping[str, str] | None = None) -> Config:
    """The config in force: *path*, else $GUARD_CONFIG, else the OS default path if it
    exists, else the embedded default. Raises ConfigError (file, line) when invalid."""
    env = os.environ if env is None else env
    chosen = path or env.get("GUARD_CONFIG")
    if not chosen:
        default = default_config_path()
        if not default.is_file():
            return embedded_default()
        chosen = default
    p = Path(chosen)
    try:
        text = p.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found", path=str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config: {exc}", path=str(p)) from None
    return parse_config(text, str(p))


_TOML_LINE = re.compile(r"at line (\d+), column (\d+)")


def parse_config(text: str, source: str = "<string>") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = _TOML_LINE.search(str(exc))
        line = int(m.group(1)) if m else None
        if "at end of document" in str(exc):
            line = max(1, len(text.rstrip("\n").splitlines()))
        msg = re.sub(r"\s*\((?:at line \d+, column \d+|at end of document)\)?", "",
                     str(exc)).strip() or "invalid TOML"
        raise ConfigError(f"invalid TOML: {msg}", path=source, line=line) from None
    return _build(raw, text, source)


def _line_of(text: str, key: str, table: str | None = None) -> int | None:
    """Best-effort line number of `key = ...` at top level (or inside [table]/[[table]]);
    falls back to the table's header line."""
    current: str | None = None
    header: int | None = None
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("["):
            current = stripped.strip("[]").strip()
            if current == table and header is None:
                header = n
            continue
        if current == table and re.match(rf"{re.escape(key)}\s*=", stripped):
            return n
    return header


_SIMPLE: dict[str, tuple[type, ...]] = {
    "mode": (str,), "quarantine_dir": (str,), "log_file": (str,), "allowlist": (str,),
    "state_dir": (str,), "workers": (int,), "queue_size": (int,), "settle_s": (int, float),
    "sweep_interval_s": (int, float), "max_size_mb": (int, float),
    "yara_timeout_s": (int, float), "quarantine_suspicious": (bool,), "log_clean": (bool,),
    "log_max_mb": (int, float), "log_keep": (int,), "notify": (str,),
    "log_signing": (bool,), "log_key_file": (str,),
    "parser_isolation": (bool,), "parser_cpu_s": (int, float),
    "parser_memory_mb": (int, float), "parser_wall_s": (int, float),
    "parser_idle_s": (int, float),
    "meeting_linger_s": (int, float), "meeting_poll_s": (int, float),
    "launch_control": (str,), "decision_timeout_s": (int, float), "fail_mode": (str,),
    "process_poll_s": (int, float), "break_glass_file": (str,),
    "syslog_target": (str,), "syslog_format": (str,), "syslog_facility": (str,),
    "syslog_tls_ca": (str,),
    "syslog_tls_cert": (str,), "syslog_tls_key": (str,), "syslog_tls_verify": (bool,),
    "allowlist_url": (str,), "allowlist_pull_s": (int, float), "allowlist_ca_file": (str,),
}
_LISTS = {"rules", "exclude", "meeting_apps", "launch_extra_paths", "allowlist_pubkeys"}
_FACILITIES = ("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp",
               "cron", "authpriv", "ftp", "ntp", "audit", "alert", "clock",
               *(f"local{n}" for n in range(8)))
_OPTIONAL_PATHS = ("syslog_tls_ca", "syslog_tls_cert", "syslog_tls_key", "allowlist_ca_file")


def _expand(value: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(value)))


def _build(raw: dict[str, Any], text: str, source: str) -> Config:
    def fail(msg: str, key: str, table: str | None = None) -> ConfigError:
        return ConfigError(msg, path=source, line=_line_of(text, key, table))

    base = _default_paths()
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "watch":
            continue
        if key in _SIMPLE:
            if isinstance(value, bool) and bool not in _SIMPLE[key]:
                raise fail(f"{key} must be {_kind(_SIMPLE[key])}, not a boolean", key)
            if not isinstance(value, _SIMPLE[key]):
                raise fail(f"{key} must be {_kind(_SIMPLE[key])}", key)
            values[key] = value
        elif key in _LISTS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise fail(f"{key} must be a list of strings", key)
            values[key] = tuple(value)
        else:
            raise fail(f"unknown key {key!r}", key)
    if values.get("mode", "enforce") not in MODES:
        raise fail(f"mode must be one of {', '.join(MODES)}", "mode")
    for key in ("workers", "queue_size", "log_keep"):
        if key in values and values[key] < 1:
            raise fail(f"{key} must be at least 1", key)
    for key in ("settle_s", "sweep_interval_s", "max_size_mb", "yara_timeout_s",
                "log_max_mb", "meeting_poll_s", "parser_cpu_s", "parser_memory_mb",
                "parser_wall_s", "parser_idle_s"):
        if key in values and values[key] <= 0:
            raise fail(f"{key} must be more than 0", key)
    notify = values.get("notify", "auto")
    if notify not in ("auto", "none") and not notify.startswith("file:"):
        raise fail("notify must be auto, none or file:PATH", "notify")
    if values.get("launch_control", "auto") not in ("auto", "fanotify", "monitor", "off"):
        raise fail("launch_control must be auto, fanotify, monitor or off", "launch_control")
    if values.get("fail_mode", "open") not in tuple(f.value for f in FailMode):
        raise fail("fail_mode must be open or closed", "fail_mode")
    for key in ("decision_timeout_s", "process_poll_s", "allowlist_pull_s"):
        if key in values and values[key] <= 0:
            raise fail(f"{key} must be more than 0", key)
    target = values.get("syslog_target", "")
    if target and not re.fullmatch(r"(udp|tcp|tls)://[^\s/:]+(:\d{1,5})?/?", target):
        raise fail("syslog_target must look like udp://host:514, tcp://host:514 or "
                   "tls://host:6514", "syslog_target")
    facility = values.get("syslog_facility", "authpriv")
    if facility.lower() not in _FACILITIES and not (facility.isdigit() and int(facility) < 24):
        raise fail(f"syslog_facility must be one of {', '.join(_FACILITIES)} or 0-23",
                   "syslog_facility")
    if values.get("syslog_format", "rfc5424") not in ("rfc5424", "cef"):
        raise fail("syslog_format must be rfc5424 or cef", "syslog_format")
    url = values.get("allowlist_url", "")
    if url and not re.match(r"https?://", url):
        raise fail("allowlist_url must be an http:// or https:// URL", "allowlist_url")
    if url and not values.get("allowlist_pubkeys"):
        raise fail("allowlist_url needs allowlist_pubkeys: the public keys whose "
                   "signatures are trusted", "allowlist_url")
    if "mode" in values:
        values["mode"] = Mode(values["mode"])
    if "fail_mode" in values:
        values["fail_mode"] = FailMode(values["fail_mode"])
    for key in _OPTIONAL_PATHS:
        if key in values:
            values[key] = _expand(values[key])
    if "allowlist_pubkeys" in values:
        values["allowlist_pubkeys"] = tuple(_expand(v) for v in values["allowlist_pubkeys"])
    for key in ("quarantine_dir", "log_file", "allowlist", "state_dir"):
        values[key] = _expand(values[key]) if key in values else base[key]
    if "log_key_file" in values:
        values["log_key_file"] = _expand(values["log_key_file"])
    values["break_glass_file"] = _expand(values["break_glass_file"]) if \
        "break_glass_file" in values else values["state_dir"] / "break-glass"
    if "launch_extra_paths" in values:
        values["launch_extra_paths"] = tuple(_expand(r) for r in values["launch_extra_paths"])
    if "rules" in values:
        values["rules"] = tuple(_expand(r) for r in values["rules"])
    watches = []
    entries = raw.get("watch", [])
    if not isinstance(entries, list):
        raise fail("watch must be an array of tables: [[watch]]", "watch")
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise fail("each [[watch]] needs a path = \"...\"", "path", "watch")
        unknown = set(entry) - {"path", "source"}
        if unknown:
            raise fail(f"unknown key {sorted(unknown)[0]!r} in [[watch]]",
                       sorted(unknown)[0], "watch")
        src = entry.get("source", "browser")
        if not isinstance(src, str) or not src:
            raise fail("watch source must be a non-empty string", "source", "watch")
        watches.append(WatchFolder(_expand(entry["path"]), src))
    if "watch" not in raw:
        watches = list(embedded_default().watch)
    return Config(**values, watch=tuple(watches), source=source)


def _kind(types: tuple[type, ...]) -> str:
    if float in types:
        return "a number"
    names = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}
    return " or ".join(dict.fromkeys(names[t] for t in types))
