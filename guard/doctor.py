"""``guard doctor``: check an installation and explain what is wrong and how to fix it.

Each check gives OK, WARN (works, but weaker than intended) or FAIL (a part does not
work), with one line of detail and, when not OK, a hint. The exit status is 0 when every
check is OK, 1 when anything is degraded. Checks only read: nothing is changed.
"""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from .config import Config, is_root, load_config
from .errors import GuardError

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class Check:
    name: str
    status: str          # ok | warn | fail
    detail: str
    hint: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def run_checks(config_path: str | None) -> list[Check]:
    """Every check, in order. A configuration that does not load is the only check."""
    try:
        config = load_config(config_path)
    except GuardError as exc:
        return [Check("config", FAIL, str(exc), "fix the line named; `guard config check`")]
    checks = [Check("config", OK, f"loaded from {config.source}, mode {config.mode}")]
    for fn in _CHECKS:
        try:
            checks.extend(fn(config))
        except Exception as exc:  # a broken check must not hide the others
            checks.append(Check(fn.__name__.removeprefix("_check_"), FAIL,
                                f"the check itself failed: {type(exc).__name__}: {exc}"))
    return checks


def _owner_ok(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() or st.st_uid == 0


def _perm_problem(path: Path, st: os.stat_result, *, private: bool) -> str:
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link"
    if not _owner_ok(st):
        return f"{path} is owned by uid {st.st_uid}, not by root or the agent's user"
    if mode & 0o002:
        return f"{path} is writable by everyone (mode {mode:04o})"
    if private and mode & 0o077:
        return f"{path} is open to other users (mode {mode:04o}; want 0700)"
    return ""


def _check_files(config: Config) -> Iterator[Check]:
    """Who can change what the agent trusts, and who can read what it keeps."""
    items: list[tuple[str, Path | None, bool, bool]] = [
        # name, path, private (0700), must exist
        ("config file", Path(config.source) if not config.source.startswith("<") else None,
         False, False),
        ("allowlist", config.allowlist, False, False),
        ("quarantine vault", config.quarantine_dir, True, False),
        ("audit log folder", config.log_file.parent, False, False),
        ("audit log", config.log_file, False, False),
        ("audit log key", config.audit_key_path, True, False),
    ]
    for name, path, private, _ in items:
        if path is None and name == "audit log key":
            yield Check(name, WARN, "log_signing is off: a rewrite of the log from any "
                        "record on cannot be told apart", "set log_signing = true")
            continue
        if path is None:
            yield Check(name, OK, "none: the embedded default configuration")
            continue
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            hint = {"allowlist": "nothing extra is allowed; add entries with `guard allow add`",
                    "quarantine vault": "the agent creates it (0700) at its first quarantine",
                    }.get(name, "the agent creates it when it starts")
            yield Check(name, OK if name != "config file" else WARN,
                        f"{path} does not exist yet", hint)
            continue
        except OSError as exc:
            yield Check(name, FAIL, f"{path}: {exc.strerror}", "check the path's permissions")
            continue
        problem = _perm_problem(path, st, private=private)
        if problem:
            yield Check(name, FAIL if name in ("allowlist", "config file") else WARN, problem,
                        f"chown root and chmod "
                        f"{('0700' if stat.S_ISDIR(st.st_mode) else '0600') if private else 'go-w'}"
                        f" {path}")
        else:
            yield Check(name, OK, f"{path} (mode {stat.S_IMODE(st.st_mode):04o})")


def _check_launch_control(config: Config) -> Iterator[Check]:
    from .sources import fanotify
    ok, why = fanotify.available()
    if config.launch_control == "off":
        yield Check("launch control", WARN, "off in the configuration",
                    "set launch_control = \"auto\" to block launches from watched folders")
    elif ok:
        yield Check("launch control", OK, f"fanotify available ({why})")
    elif config.launch_control == "fanotify":
        yield Check("launch control", FAIL, f"fanotify required but unavailable: {why}",
                    "run the agent as root on Linux 5.0+, or use launch_control = \"auto\"")
    else:
        yield Check("launch control", WARN, f"fanotify unavailable ({why}): the portable "
                    "monitor stops launches after they start",
                    "run the agent as root on Linux to block launches before they run"
                    if not is_root() else "")


def _check_rules(config: Config) -> Iterator[Check]:
    from .scanner import load_rules
    rules = load_rules(config.rules)
    missing = [str(d) for d in config.rules if not Path(d).is_dir()]
    count = rules.rule_count
    if rules.errors:
        yield Check("rules", WARN, f"{count} rules from {len(rules)} files compiled; "
                    f"{len(rules.errors)} file(s) skipped: {rules.errors[0]}",
                    "`guard rules check` lists them all")
    else:
        yield Check("rules", OK, f"{count} rules from {len(rules)} files compiled"
                    + (f"; rule folders not found: {', '.join(missing)}" if missing else ""))


def _check_watched(config: Config) -> Iterator[Check]:
    there = [w for w in config.watch if Path(w.path).is_dir()]
    gone = [str(w.path) for w in config.watch if not Path(w.path).is_dir()]
    if not there and config.source.startswith("<"):
        yield Check("watched folders", WARN, f"{', '.join(gone)} does not exist yet",
                    "the agent creates the download folder when it starts")
    elif not there:
        yield Check("watched folders", FAIL, "none of the watched folders exists"
                    + (f" ({', '.join(gone)})" if gone else " (none configured)"),
                    "`guard folders` lists the known folders; add [[watch]] tables")
    elif gone:
        yield Check("watched folders", WARN, f"{len(there)} exist, missing: {', '.join(gone)}",
                    "create them or remove their [[watch]] tables")
    else:
        yield Check("watched folders", OK, f"{len(there)} folder(s): "
                    + ", ".join(str(w.path) for w in there[:4]) + (" ..." if len(there) > 4
                                                                  else ""))


def _check_log_chain(config: Config) -> Iterator[Check]:
    from .audit.verify import log_files, verify_log
    if not log_files(config.log_file):
        yield Check("audit log chain", OK, f"no log yet at {config.log_file}")
        return
    result = verify_log(config.log_file)
    if result.ok:
        yield Check("audit log chain", OK, f"{result.records} records in "
                    f"{len(result.files)} file(s) verify")
    else:
        yield Check("audit log chain", FAIL, f"TAMPERED: first bad record "
                    f"{result.first_bad_seq}: {result.problems[0] if result.problems else ''}",
                    "`guard log verify` lists every problem; tell the SOC")


def _check_agent(config: Config) -> Iterator[Check]:
    from .agent.status import read_status
    status = read_status(config)
    if status is None:
        yield Check("agent", WARN, "no agent is running with this configuration",
                    "systemctl start guard (Linux), or `guard run`")
        return
    lc = status.get("launch_control") or {}
    detail = (f"running (pid {status.get('pid')}), mode {status.get('effective_mode')}, "
              f"launch control {lc.get('backend', '?')}")
    if status.get("break_glass"):
        yield Check("agent", WARN, detail + ", BREAK-GLASS ON", "`guard break-glass off`")
    elif status.get("last_error"):
        yield Check("agent", WARN, detail + f"; last error: {status['last_error']}")
    else:
        yield Check("agent", OK, detail)


def _check_collector(config: Config) -> Iterator[Check]:
    if not config.syslog_target:
        yield Check("syslog collector", OK, "not configured (records stay in the local log)")
        return
    parts = urlsplit(config.syslog_target)
    host, port = parts.hostname or "", parts.port or (6514 if parts.scheme == "tls" else 514)
    if parts.scheme == "udp":
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            yield Check("syslog collector", OK, f"{config.syslog_target} resolves (UDP: "
                        "delivery cannot be checked)")
        except OSError as exc:
            yield Check("syslog collector", FAIL, f"{host}: {exc}", "check the host name")
        return
    try:
        with socket.create_connection((host, port), timeout=3):
            pass
        yield Check("syslog collector", OK, f"{config.syslog_target} accepts connections")
    except OSError as exc:
        yield Check("syslog collector", WARN, f"{config.syslog_target}: {exc.strerror or exc}",
                    "records wait in the local log and are sent once it is reachable")


def _check_allowlist_source(config: Config) -> Iterator[Check]:
    if not config.allowlist_url:
        return
    missing = [str(p) for p in config.allowlist_pubkeys if not Path(p).is_file()]
    if missing:
        yield Check("allowlist source", FAIL, f"public key file(s) missing: "
                    f"{', '.join(missing)}", "copy the fleet's public key there")
        return
    from .agent.status import read_status
    pull = ((read_status(config) or {}).get("allowlist") or {}).get("pull") or {}
    if pull.get("last_error"):
        yield Check("allowlist source", WARN, f"{config.allowlist_url}: {pull['last_error']}",
                    "the last good list stays in force; check the server and the bundle")
    else:
        yield Check("allowlist source", OK, f"{config.allowlist_url}, "
                    f"{len(config.allowlist_pubkeys)} trusted key(s), applied version "
                    f"{pull.get('applied_version') or 'none yet'}")


_CHECKS: list[Callable[[Config], Iterator[Check]]] = [
    _check_files, _check_launch_control, _check_rules, _check_watched, _check_log_chain,
    _check_agent, _check_collector, _check_allowlist_source]


def report(checks: list[Check]) -> tuple[str, int]:
    """Text for people, and the exit status: 0 healthy, 1 degraded."""
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.status.upper():4}  {c.name.ljust(width)}  {c.detail}")
        if c.hint and c.status != OK:
            lines.append(f"{'':4}  {'':{width}}  -> {c.hint}")
    bad = [c for c in checks if c.status != OK]
    lines.append("healthy" if not bad else
                 f"degraded: {sum(c.status == FAIL for c in bad)} failed, "
                 f"{sum(c.status == WARN for c in bad)} warnings")
    return "\n".join(lines), 0 if not bad else 1


def as_json(checks: list[Check]) -> dict[str, Any]:
    healthy = all(c.status == OK for c in checks)
    return {"healthy": healthy, "checks": [c.to_dict() for c in checks]}
