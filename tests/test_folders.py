"""The built-in map of where received files arrive, for Linux, macOS and Windows."""

from __future__ import annotations

import os
from pathlib import Path, PurePath, PureWindowsPath

import pytest

from guard.folders import SOURCES, KnownFolder, existing, known_folders, parse_user_dirs

DEFAULT_USER_DIRS = """\
# This file is written by xdg-user-dirs-update
# If you want to change or add directories, just edit the line you're
# interested in. All local changes will be retained on the next run.
# Format is XDG_xxx_DIR="$HOME/yyy", where yyy is a shell-escaped
# homedir-relative path, or XDG_xxx_DIR="/yyy", where /yyy is an
# absolute path. No other format is supported.
#
XDG_DESKTOP_DIR="$HOME/Desktop"
XDG_DOWNLOAD_DIR="$HOME/Downloads"
XDG_DOCUMENTS_DIR="$HOME/Documents"
"""


def by_source(folders: list[KnownFolder]) -> dict[str, list[PurePath]]:
    out: dict[str, list[PurePath]] = {}
    for folder in folders:
        for source in folder.sources:
            out.setdefault(source, []).append(folder.path)
    return out


def write_user_dirs(config: Path, text: str) -> None:
    config.mkdir(parents=True, exist_ok=True)
    (config / "user-dirs.dirs").write_text(text, "utf-8")


# --- user-dirs.dirs -------------------------------------------------------------------

def test_user_dirs_default_file():
    home = Path("/home/ann")
    dirs = parse_user_dirs(DEFAULT_USER_DIRS, home)
    assert dirs == {"DESKTOP": home / "Desktop", "DOWNLOAD": home / "Downloads",
                    "DOCUMENTS": home / "Documents"}


@pytest.mark.parametrize("line, expected", [
    ('XDG_DOWNLOAD_DIR="$HOME/Téléchargements"', "/home/ann/Téléchargements"),
    ('XDG_DOWNLOAD_DIR="$HOME/My Files/in"', "/home/ann/My Files/in"),
    (r'XDG_DOWNLOAD_DIR="$HOME/a \"b\" \$c \\d"', '/home/ann/a "b" $c \\d'),
    ('XDG_DOWNLOAD_DIR="/data/downloads"', "/data/downloads"),
    ("  XDG_DOWNLOAD_DIR = $HOME/unquoted  ", "/home/ann/unquoted"),
    ('XDG_DOWNLOAD_DIR="$HOME"', "/home/ann"),
])
def test_user_dirs_download_values(line, expected):
    assert parse_user_dirs(line, Path("/home/ann"))["DOWNLOAD"] == Path(expected)


@pytest.mark.parametrize("line", [
    '# XDG_DOWNLOAD_DIR="$HOME/commented"',
    'XDG_DOWNLOAD_DIR="relative/path"',
    'XDG_DOWNLOAD_DIR="$XDG_OTHER/x"',
    'XDG_DOWNLOAD_DIR="$HOMEX/x"',
    "garbage line without equals",
    "",
])
def test_user_dirs_ignores_what_the_format_does_not_allow(line):
    assert parse_user_dirs(line, Path("/home/ann")) == {}


# --- Linux -----------------------------------------------------------------------------

def test_linux_defaults_without_user_dirs(tmp_path):
    folders = known_folders("Linux", tmp_path, env={})
    got = by_source(folders)
    assert got["browser"] == [tmp_path / "Downloads"]
    assert tmp_path / "Downloads" / "Telegram Desktop" in got["telegram"]
    assert got["zoom"] == [tmp_path / "Documents" / "Zoom"]
    assert tmp_path / ".config" / "Signal" / "attachments.noindex" in got["signal"]
    assert all(isinstance(f.path, Path) for f in folders)


def test_linux_custom_download_dir_from_user_dirs(tmp_path):
    write_user_dirs(tmp_path / ".config", DEFAULT_USER_DIRS.replace(
        '"$HOME/Downloads"', '"$HOME/Téléchargements"').replace(
        '"$HOME/Documents"', '"/srv/docs"'))
    got = by_source(known_folders("Linux", tmp_path, env={}))
    custom = tmp_path / "Téléchargements"
    assert got["browser"] == [custom]
    assert set(got["slack"]) == set(got["discord"]) == {custom}
    assert custom / "Telegram Desktop" in got["telegram"]
    assert got["zoom"] == [Path("/srv/docs/Zoom")]


def test_linux_honours_absolute_xdg_bases_and_ignores_relative_ones(tmp_path):
    config, data = tmp_path / "cfg", tmp_path / "data"
    write_user_dirs(config, 'XDG_DOWNLOAD_DIR="$HOME/dl"\n')
    got = by_source(known_folders("Linux", tmp_path / "home",
                                  env={"XDG_CONFIG_HOME": str(config),
                                       "XDG_DATA_HOME": str(data)}))
    assert got["browser"] == [tmp_path / "home" / "dl"]
    assert config / "Signal" / "attachments.noindex" in got["signal"]
    assert data / "TelegramDesktop" / "tdata" / "temp_data" in got["telegram"]

    relative = by_source(known_folders("Linux", tmp_path, env={"XDG_CONFIG_HOME": "cfg"}))
    assert tmp_path / ".config" / "Signal" / "attachments.noindex" in relative["signal"]


def test_linux_download_dir_equal_to_home_is_flagged(tmp_path):
    write_user_dirs(tmp_path / ".config", 'XDG_DOWNLOAD_DIR="$HOME/"\n')
    browser = next(f for f in known_folders("Linux", tmp_path, env={})
                   if "browser" in f.sources)
    assert browser.path == tmp_path
    assert "without recursion" in browser.note


def test_unknown_system_gets_the_linux_map(tmp_path):
    assert known_folders("FreeBSD", tmp_path, {}) == known_folders("Linux", tmp_path, {})


# --- macOS -----------------------------------------------------------------------------

def test_macos_map(tmp_path):
    folders = known_folders("Darwin", tmp_path, env={})
    got = by_source(folders)
    lib = tmp_path / "Library"
    assert got["browser"] == [tmp_path / "Downloads"]
    assert tmp_path / "Downloads" / "Telegram Desktop" in got["telegram"]
    assert lib / "Group Containers" / "6N38VWS5BX.ru.keepcoder.Telegram" in got["telegram"]
    assert got["zoom"] == [tmp_path / "Documents" / "Zoom"]
    assert got["whatsapp"] == [
        lib / "Group Containers" / "group.net.whatsapp.WhatsApp.shared" / "Message" / "Media"]
    assert lib / "Containers" / "com.tinyspeck.slackmacgap" / "Data" / "Downloads" in got["slack"]
    assert lib / "Containers" / "com.microsoft.teams2" / "Data" / "Downloads" in got["teams"]
    assert lib / "Application Support" / "Microsoft" / "Teams" in got["teams"]
    assert got["signal"] == [lib / "Application Support" / "Signal" / "attachments.noindex"]


def test_macos_downloads_listed_once_with_every_source(tmp_path):
    folders = known_folders("Darwin", tmp_path, env={})
    downloads = [f for f in folders if f.path == tmp_path / "Downloads"]
    assert len(downloads) == 1
    assert {"browser", "slack", "discord", "teams", "telegram"} <= set(downloads[0].sources)
    assert downloads[0].sources[0] == "browser"
    assert "Slack" in downloads[0].note and "Discord" in downloads[0].note


# --- Windows ---------------------------------------------------------------------------

WIN_ENV = {"USERPROFILE": r"C:\Users\ann", "LOCALAPPDATA": r"C:\Users\ann\AppData\Local",
           "APPDATA": r"D:\Roaming\ann"}


def test_windows_map_uses_windows_paths_and_env():
    folders = known_folders("Windows", env=WIN_ENV)
    assert all(isinstance(f.path, PureWindowsPath) for f in folders)
    got = {source: [str(p) for p in paths] for source, paths in by_source(folders).items()}
    assert got["browser"] == [r"C:\Users\ann\Downloads"]
    assert r"C:\Users\ann\Downloads\Telegram Desktop" in got["telegram"]
    assert got["zoom"] == [r"C:\Users\ann\Documents\Zoom"]
    assert got["whatsapp"] == [r"C:\Users\ann\AppData\Local\Packages"
                               r"\5319275A.WhatsAppDesktop_cv1g1gvanyjgm\LocalState\shared\transfers"]
    assert (r"C:\Users\ann\AppData\Local\Packages\MSTeams_8wekyb3d8bbwe\LocalCache\Microsoft"
            r"\MSTeams") in got["teams"]
    assert r"D:\Roaming\ann\Microsoft\Teams" in got["teams"]
    assert got["signal"] == [r"D:\Roaming\ann\Signal\attachments.noindex"]


def test_windows_defaults_appdata_under_profile_and_home_argument_wins():
    folders = known_folders("Windows", home=r"E:\Profiles\bob", env={"USERPROFILE": r"C:\x"})
    paths = {str(f.path) for f in folders}
    assert r"E:\Profiles\bob\Downloads" in paths
    assert r"E:\Profiles\bob\AppData\Roaming\Signal\attachments.noindex" in paths
    assert not any(p.startswith("C:") for p in paths)


# --- every map -------------------------------------------------------------------------

@pytest.mark.parametrize("system", ["Linux", "Darwin", "Windows"])
def test_every_map_is_deduplicated_and_labelled(system, tmp_path):
    folders = known_folders(system, tmp_path, env=WIN_ENV if system == "Windows" else {})
    paths = [str(f.path) for f in folders]
    assert len(paths) == len(set(paths))
    labels = {s for f in folders for s in f.sources}
    assert labels == set(SOURCES)
    assert all(f.note and "; ;" not in f.note for f in folders)
    assert all(len(set(f.sources)) == len(f.sources) for f in folders)


def test_defaults_run_on_this_machine():
    folders = known_folders()
    assert folders and all(isinstance(f.path, PurePath) for f in folders)


# --- existing --------------------------------------------------------------------------

def test_existing_returns_exactly_the_folders_created(tmp_path):
    folders = known_folders("Linux", tmp_path, env={})
    made = [tmp_path / "Downloads" / "Telegram Desktop",
            tmp_path / ".config" / "Signal" / "attachments.noindex"]
    for path in made:
        path.mkdir(parents=True)
    (tmp_path / "Documents").mkdir()
    (tmp_path / "Documents" / "Zoom").write_text("a file, not a folder")
    found = existing(folders)
    # Downloads exists too: it is the parent of the Telegram folder.
    assert [f.path for f in found] == [tmp_path / "Downloads", *made]
    assert found[0].sources == ("browser", "slack", "discord", "teams", "whatsapp")


def test_existing_merges_a_sandbox_downloads_symlink(tmp_path):
    downloads = tmp_path / "Downloads"
    downloads.mkdir()
    container = tmp_path / "Library" / "Containers" / "com.tinyspeck.slackmacgap" / "Data"
    container.mkdir(parents=True)
    os.symlink(downloads, container / "Downloads")
    found = existing(known_folders("Darwin", tmp_path, env={}))
    assert [f.path for f in found] == [downloads]
    assert "slack" in found[0].sources and "sandboxed" in found[0].note


def test_existing_with_injected_predicate_for_a_windows_map():
    folders = known_folders("Windows", env=WIN_ENV)
    present = {r"C:\Users\ann\Downloads", r"D:\Roaming\ann\Signal\attachments.noindex"}
    found = existing(folders, exists=present.__contains__, resolve=str.lower)
    assert [str(f.path) for f in found] == sorted(present)
    assert existing(folders, exists=lambda p: False) == []
