"""What a shortcut runs: Windows .lnk (LnkParse3), .url, .desktop, .scf, .webloc."""

from __future__ import annotations

import configparser
import contextlib
import io
import os
import re
import warnings
from dataclasses import dataclass

# Programs attackers start from shortcuts (LOLBins, interpreters and downloaders).
COMMAND_RUNNERS = frozenset("""powershell pwsh cmd mshta rundll32 regsvr32 wscript cscript
    certutil bitsadmin curl wget msiexec conhost forfiles schtasks wmic cmstp msbuild
    installutil regasm regsvcs odbcconf ieexec hh bash sh python pythonw node java javaw
    explorer finger tar expand esentutl msxsl pcalua scriptrunner ftp sc reg bitsadmin
    osascript""".split())
_WORD = re.compile(r"[A-Za-z0-9_\-]+(?:\.exe)?", re.I)


@dataclass(frozen=True)
class ShortcutFacts:
    target: str = ""
    arguments: str = ""
    working_dir: str = ""
    icon: str = ""
    runners: tuple[str, ...] = ()      # command runners named in target or arguments
    remote: bool = False               # target on a network share or URL scheme other than http(s)
    error: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"target": self.target, "arguments": self.arguments,
                "working_dir": self.working_dir, "icon": self.icon,
                "runners": list(self.runners), "remote": self.remote}


def _runners(*texts: str) -> tuple[str, ...]:
    found: list[str] = []
    for text in texts:
        for token in _WORD.findall(text.replace("\\", " ").replace("/", " ")):
            word = token.lower().removesuffix(".exe")
            if word in COMMAND_RUNNERS and word not in found:
                found.append(word)
    return tuple(found)


def _is_remote(target: str) -> bool:
    t = target.strip().lower()
    return t.startswith("\\\\") or t.startswith("file://") or t.startswith("smb://") or \
        bool(re.match(r"^[a-z][a-z0-9+.\-]*:", t) and not re.match(r"^(https?|[a-z]):", t))


def inspect_shortcut(data: bytes, kind: str) -> ShortcutFacts:
    """Never raises; a shortcut that cannot be parsed has ``error`` set."""
    try:
        if kind == "lnk":
            return _inspect_lnk(data)
        return _inspect_text(data.decode("utf-8", "replace"), kind)
    except Exception as exc:  # LnkParse3 raises many kinds on malformed input
        return ShortcutFacts(error=f"{type(exc).__name__}: {exc}"[:200])


def _inspect_lnk(data: bytes) -> ShortcutFacts:
    import LnkParse3

    # LnkParse3 prints and warns about damaged parts instead of raising: keep both quiet
    # and report the first warning as the shortcut's parse error.
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lnk = LnkParse3.lnk_file(indata=data)
        info = lnk.get_json()
    damage = str(caught[0].message)[:200] if caught else ""
    d = info.get("data", {}) or {}
    li = info.get("link_info", {}) or {}
    extra = info.get("extra", {}) or {}
    target = li.get("local_base_path") or li.get("common_network_relative_link", {}).get(
        "net_name", "") if isinstance(li, dict) else ""
    env = extra.get("ENVIRONMENTAL_VARIABLES_LOCATION_BLOCK", {}) if isinstance(extra, dict) else {}
    if not target and isinstance(env, dict):
        target = env.get("target_ansi") or env.get("target_unicode") or ""
    if not target:
        target = d.get("relative_path", "") or ""
    args = d.get("command_line_arguments", "") or ""
    icon = d.get("icon_location", "") or ""
    return ShortcutFacts(target=str(target), arguments=str(args),
                         working_dir=str(d.get("working_directory", "") or ""), icon=str(icon),
                         runners=_runners(str(target), str(args)), remote=_is_remote(str(target)),
                         error=damage)


def _inspect_text(text: str, kind: str) -> ShortcutFacts:
    if kind == "webloc":
        m = re.search(r"<key>URL</key>\s*<string>([^<]*)</string>", text, re.I)
        target = m.group(1).strip() if m else ""
        return ShortcutFacts(target=target, runners=_runners(target), remote=_is_remote(target))
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment]
    parser.read_file(io.StringIO(text.lstrip("\ufeff")))
    values: dict[str, str] = {}
    for section in parser.sections():
        for key, value in parser.items(section):
            values.setdefault(key.lower(), value)
    target = values.get("url") or values.get("exec") or values.get("command") or ""
    icon = values.get("iconfile") or values.get("icon") or ""
    return ShortcutFacts(target=target.strip(), icon=icon, runners=_runners(target),
                         remote=_is_remote(target))
