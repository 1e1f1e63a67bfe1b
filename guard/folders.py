"""The built-in map of where received files arrive, per OS: browsers, meeting and chat apps.

Data, not logic: each OS has one table of ``(source, path, note)`` rows, read top to
bottom. ``known_folders`` is a pure function of its arguments plus one file it may read
(``$XDG_CONFIG_HOME/user-dirs.dirs`` on Linux), so the Linux, macOS and Windows maps can
all be built and tested on any machine. It never checks the disk; ``existing`` does.
(STYLE keeps env and config reading in one place: only the defaults of ``system``,
``home`` and ``env`` reach outside, so ``config.py`` can pass all three explicitly.)

Several apps save into the same folder (Slack, Discord and Teams use the browser
Downloads folder), so a ``KnownFolder`` carries every source label that lands there:
``sources`` is a tuple, each path appears once.

Paths and notes were checked against public documentation, vendor KB pages and bug
trackers where possible; a note says so when a location is not confirmed.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath

SOURCES = ("browser", "zoom", "slack", "teams", "telegram", "discord", "whatsapp", "signal")
MAX_USER_DIRS_BYTES = 64 * 1024  # user-dirs.dirs is a few hundred bytes; never read more

# Windows package family names (publisher hash suffix is fixed per app, same on every PC).
_WHATSAPP_PKG = "5319275A.WhatsAppDesktop_cv1g1gvanyjgm"
_TEAMS_PKG = "MSTeams_8wekyb3d8bbwe"
_TELEGRAM_MAC_GROUP = "6N38VWS5BX.ru.keepcoder.Telegram"
_WHATSAPP_MAC_GROUP = "group.net.whatsapp.WhatsApp.shared"

# Notes are joined with "; " when folders merge, so a note never contains "; " itself.
_SANDBOX_NOTE = ("sandboxed Mac App Store app, whose container Data/Downloads is normally a "
                 "symlink to ~/Downloads (existing() merges the two)")


@dataclass(frozen=True)
class KnownFolder:
    """One folder where received files arrive.

    ``sources`` lists every app label (see ``SOURCES``) that saves here, in table order;
    ``note`` says what lands there and any doubt about the location.
    """

    sources: tuple[str, ...]
    path: PurePath
    note: str = ""


_Row = tuple[str, PurePath, str]


def known_folders(system: str | None = None, home: PurePath | str | None = None,
                  env: Mapping[str, str] | None = None) -> list[KnownFolder]:
    """Return the folders where files from browsers and chat/meeting apps arrive.

    Limits: does not check which folders exist (see ``existing``), and does not read the
    Windows registry, so a relocated Windows Downloads or Documents folder (or one moved
    into OneDrive) is not followed. Any OS other than Windows and macOS gets the Linux
    (XDG) map.

    Args:
        system: ``platform.system()`` value: "Linux", "Darwin" or "Windows".
        home: the user's home folder. Defaults to ``%USERPROFILE%`` (Windows) or
            ``Path.home()``; an explicit value wins over both.
        env: environment to read ``XDG_CONFIG_HOME``, ``XDG_DATA_HOME``, ``USERPROFILE``,
            ``LOCALAPPDATA`` and ``APPDATA`` from. Defaults to ``os.environ``.

    Returns:
        One ``KnownFolder`` per distinct path, in table order. Windows paths are
        ``PureWindowsPath`` unless running on Windows; POSIX paths are ``Path`` on POSIX.
    """
    system = platform.system() if system is None else system
    env = os.environ if env is None else env
    if system == "Windows":
        rows = _windows_rows(_windows_home(home, env), env)
    elif system == "Darwin":
        rows = _macos_rows(_posix_path(str(home if home is not None else Path.home())))
    else:
        rows = _linux_rows(_posix_path(str(home if home is not None else Path.home())), env)
    return _merge((str(path), KnownFolder((source,), path, note)) for source, path, note in rows)


def existing(folders: Iterable[KnownFolder], exists: Callable[[str], bool] = os.path.isdir,
             resolve: Callable[[str], str] = os.path.realpath) -> list[KnownFolder]:
    """Keep the folders that exist, merging those that resolve to the same place.

    A sandboxed app's ``Data/Downloads`` is usually a symlink to ``~/Downloads``;
    watching both would report every file twice, so entries are merged by
    ``resolve(path)`` and keep the first entry's path.

    Args:
        folders: output of ``known_folders``.
        exists: predicate on the path string (injectable for tests of foreign OS maps).
        resolve: canonical form of a path string, the merge key.
    """
    present = (folder for folder in folders if exists(str(folder.path)))
    return _merge((resolve(str(folder.path)), folder) for folder in present)


def parse_user_dirs(text: str, home: PurePath) -> dict[str, PurePath]:
    """Parse ``user-dirs.dirs``: ``XDG_DOWNLOAD_DIR="$HOME/Downloads"`` -> {"DOWNLOAD": ...}.

    The format (user-dirs.dirs(5)) allows ``"$HOME/yyy"`` with ``yyy`` shell-escaped, or
    an absolute ``"/yyy"``. Unquoted values are tolerated; anything else (relative paths,
    other variables) is skipped, as xdg-user-dirs does.
    """
    dirs: dict[str, PurePath] = {}
    for line in text.splitlines():
        match = _USER_DIR_LINE.match(line)
        if not match:
            continue
        value = _shell_unquote(match.group(2))
        if value == "$HOME" or value.startswith("$HOME/"):
            rest = value[len("$HOME/"):]
            dirs[match.group(1)] = home / rest if rest else home
        elif value.startswith("/"):
            dirs[match.group(1)] = type(home)(value)
    return dirs


def read_user_dirs(config_home: PurePath, home: PurePath) -> dict[str, PurePath]:
    """Read and parse ``<config_home>/user-dirs.dirs``; empty when missing or unreadable."""
    try:
        with open(os.fspath(config_home / "user-dirs.dirs"), "rb") as fh:
            data = fh.read(MAX_USER_DIRS_BYTES)
    except (OSError, ValueError):
        return {}
    return parse_user_dirs(data.decode("utf-8", "replace"), home)


_USER_DIR_LINE = re.compile(r"^\s*XDG_([A-Z]+)_DIR\s*=\s*(.*?)\s*$")


def _shell_unquote(value: str) -> str:
    """Undo the double quotes and backslash escapes xdg-user-dirs-update writes."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return re.sub(r"\\(.)", r"\1", value)


def _linux_rows(home: PurePath, env: Mapping[str, str]) -> list[_Row]:
    config = _xdg_base(env, "XDG_CONFIG_HOME", home / ".config")
    data = _xdg_base(env, "XDG_DATA_HOME", home / ".local" / "share")
    user_dirs = read_user_dirs(config, home)
    downloads = user_dirs.get("DOWNLOAD", home / "Downloads")
    documents = user_dirs.get("DOCUMENTS", home / "Documents")
    where = ("XDG_DOWNLOAD_DIR from user-dirs.dirs" if "DOWNLOAD" in user_dirs
             else "~/Downloads (no XDG_DOWNLOAD_DIR set)")
    if downloads == home:
        where = "XDG_DOWNLOAD_DIR is the home folder itself: watch it without recursion"
    flatpak = home / ".var" / "app"
    return [
        ("browser", downloads, f"browser downloads: {where}"),
        ("slack", downloads, "Slack saves into the browser Downloads folder by default"),
        ("discord", downloads, "Discord saves into Downloads by default (not confirmed)"),
        ("teams", downloads, "Teams on Linux is the web app: files come via the browser"),
        ("whatsapp", downloads, "no Linux client: WhatsApp Web files come via the browser"),
        ("telegram", downloads / "Telegram Desktop",
         "Telegram Desktop default download folder, under XDG_DOWNLOAD_DIR"),
        ("telegram", data / "TelegramDesktop" / "tdata" / "temp_data",
         "Telegram Desktop with the 'temp folder' download setting"),
        ("zoom", documents / "Zoom",
         "Zoom local recordings and meeting files, under XDG_DOCUMENTS_DIR (not confirmed)"),
        ("signal", config / "Signal" / "attachments.noindex",
         "Signal Desktop attachments: hash-named files, no original name or extension"),
        ("signal", flatpak / "org.signal.Signal" / "config" / "Signal" / "attachments.noindex",
         "Flatpak Signal Desktop attachments"),
    ]


def _macos_rows(home: PurePath) -> list[_Row]:
    lib = home / "Library"
    downloads = home / "Downloads"
    containers = lib / "Containers"
    return [
        ("browser", downloads, "Safari, Chrome and Firefox default download folder"),
        ("slack", downloads, "Slack (direct download) saves into Downloads by default"),
        ("discord", downloads, "Discord saves into Downloads by default (not confirmed)"),
        ("teams", downloads, "Teams saves downloaded files into Downloads"),
        ("telegram", downloads, "Telegram for macOS (App Store app) saves into Downloads"),
        ("telegram", downloads / "Telegram Desktop", "Telegram Desktop default download folder"),
        ("telegram", lib / "Group Containers" / _TELEGRAM_MAC_GROUP,
         "Telegram for macOS app data, opened media is cached under "
         "appstore/account-*/postbox/media"),
        ("zoom", home / "Documents" / "Zoom", "Zoom local recordings and meeting files"),
        ("whatsapp", lib / "Group Containers" / _WHATSAPP_MAC_GROUP / "Message" / "Media",
         "WhatsApp (Mac App Store) received media and documents, one folder per chat"),
        ("slack", containers / "com.tinyspeck.slackmacgap" / "Data" / "Downloads",
         f"Slack from the Mac App Store: {_SANDBOX_NOTE}"),
        ("teams", containers / "com.microsoft.teams2" / "Data" / "Downloads",
         f"new Teams: {_SANDBOX_NOTE}"),
        ("teams", lib / "Application Support" / "Microsoft" / "Teams",
         "classic Teams app data and cache (classic Teams is retired)"),
        ("signal", lib / "Application Support" / "Signal" / "attachments.noindex",
         "Signal Desktop attachments: hash-named files"),
    ]


def _windows_rows(profile: PurePath, env: Mapping[str, str]) -> list[_Row]:
    flavour = type(profile)
    local = flavour(env["LOCALAPPDATA"]) if env.get("LOCALAPPDATA") else (
        profile / "AppData" / "Local")
    roaming = flavour(env["APPDATA"]) if env.get("APPDATA") else profile / "AppData" / "Roaming"
    downloads = profile / "Downloads"
    return [
        ("browser", downloads, "Edge, Chrome and Firefox default download folder"),
        ("slack", downloads, "Slack saves into Downloads by default"),
        ("discord", downloads, "Discord saves into Downloads by default (not confirmed)"),
        ("teams", downloads, "Teams saves downloaded files into Downloads"),
        ("telegram", downloads / "Telegram Desktop",
         "Telegram Desktop default download folder (also the Microsoft Store app's)"),
        ("telegram", roaming / "Telegram Desktop" / "tdata" / "temp_data",
         "Telegram Desktop with the 'temp folder' download setting"),
        ("zoom", profile / "Documents" / "Zoom",
         "Zoom local recordings and meeting files (Documents may be redirected to OneDrive)"),
        ("whatsapp", local / "Packages" / _WHATSAPP_PKG / "LocalState" / "shared" / "transfers",
         "WhatsApp (Microsoft Store app) received media and documents"),
        ("teams", local / "Packages" / _TEAMS_PKG / "LocalCache" / "Microsoft" / "MSTeams",
         "new Teams app data and cache, not a download folder (what lands here is not "
         "confirmed)"),
        ("teams", roaming / "Microsoft" / "Teams",
         "classic Teams app data and cache (classic Teams is retired)"),
        ("signal", roaming / "Signal" / "attachments.noindex",
         "Signal Desktop attachments: hash-named files"),
    ]


def _xdg_base(env: Mapping[str, str], name: str, default: PurePath) -> PurePath:
    """An XDG base directory from ``env``; relative values are invalid and ignored (spec)."""
    value = env.get(name, "")
    return type(default)(value) if value.startswith("/") else default


def _windows_home(home: PurePath | str | None, env: Mapping[str, str]) -> PurePath:
    flavour: type[PurePath] = Path if os.name == "nt" else PureWindowsPath
    if home is not None:
        return flavour(str(home))
    if env.get("USERPROFILE"):
        return flavour(env["USERPROFILE"])
    return flavour(str(Path.home()))


def _posix_path(text: str) -> PurePath:
    return Path(text) if os.name == "posix" else PurePosixPath(text)


def _merge(keyed: Iterable[tuple[str, KnownFolder]]) -> list[KnownFolder]:
    """Fold entries with the same key into the first one: union of sources and notes."""
    merged: dict[str, KnownFolder] = {}
    for key, folder in keyed:
        first = merged.get(key)
        if first is None:
            merged[key] = folder
            continue
        sources = first.sources + tuple(s for s in folder.sources if s not in first.sources)
        notes = [n for n in first.note.split("; ") if n]
        notes += [n for n in folder.note.split("; ") if n and n not in notes]
        merged[key] = KnownFolder(sources, first.path, "; ".join(notes))
    return list(merged.values())
