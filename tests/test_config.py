"""Configuration: the documented keys, clear file:line errors, a working embedded default."""

from __future__ import annotations

from pathlib import Path

import pytest

from guard.config import Config, load_config, parse_config
from guard.errors import ConfigError

FULL = '''
mode = "enforce"                    # "monitor" logs only; "enforce" acts
quarantine_dir = "/var/lib/guard/quarantine"
log_file = "/var/log/guard/audit.jsonl"
allowlist = "/etc/guard/allowlist.toml"
rules = ["/etc/guard/rules.d"]      # extra YARA folders beside the bundled rules/
exclude = ["*/Dropbox/*"]
[[watch]]
path = "~/Downloads"
source = "browser"
[[watch]]
path = "~/Documents/Zoom"
source = "zoom"
'''


def test_documented_keys_load():
    c = parse_config(FULL, "guard.toml")
    assert c.mode == "enforce"
    assert c.quarantine_dir == Path("/var/lib/guard/quarantine")
    assert c.log_file == Path("/var/log/guard/audit.jsonl")
    assert c.allowlist == Path("/etc/guard/allowlist.toml")
    assert c.rules == (Path("/etc/guard/rules.d"),)
    assert [(w.path, w.source) for w in c.watch] == [
        (Path.home() / "Downloads", "browser"), (Path.home() / "Documents" / "Zoom", "zoom")]
    assert c.exclude == ("*/Dropbox/*",)
    assert c.source == "guard.toml"


@pytest.mark.parametrize("text,line,words", [
    ('mode = "enforce"\nmode = "x"\n', 2, "invalid TOML"),
    ('mode = "enforce"\nworkers = 0\n', 2, "at least 1"),
    ('\n\nmode = "lockdown"\n', 3, "mode must be one of"),
    ('mode = "monitor"\ncolour = "blue"\n', 2, "unknown key 'colour'"),
    ('settle_s = "fast"\n', 1, "settle_s must be a number"),
    ('rules = "/etc"\n', 1, "rules must be a list"),
    ('x = [1,\n', 1, "invalid TOML"),
    ('mode = "enforce"\n[[watch]]\nsource = "zoom"\n', 2, "needs a path"),
    ('[[watch]]\npath = "/tmp"\nsorce = "zoom"\n', 3, "unknown key 'sorce'"),
    ('quarantine_suspicious = "yes"\n', 1, "true or false"),
    ('workers = true\n', 1, "not a boolean"),
])
def test_bad_config_names_file_and_line(text, line, words):
    with pytest.raises(ConfigError) as err:
        parse_config(text, "/etc/guard/config.toml")
    assert err.value.path == "/etc/guard/config.toml"
    assert err.value.line == line, str(err.value)
    assert words in str(err.value)
    assert str(err.value).startswith(f"/etc/guard/config.toml:{line}: ")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_env_var_names_the_file(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('mode = "monitor"\n[[watch]]\npath = "/tmp"\n')
    assert load_config(None, env={"GUARD_CONFIG": str(cfg)}).mode == "monitor"


def test_embedded_default_watches_existing_download_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    (tmp_path / "Downloads").mkdir()
    (tmp_path / "Documents" / "Zoom").mkdir(parents=True)
    c = load_config(None, env={})
    assert isinstance(c, Config) and c.mode == "enforce"
    watched = {(str(w.path), w.source) for w in c.watch}
    assert (str(tmp_path / "Downloads"), "browser") in watched
    assert any(p == str(tmp_path / "Documents" / "Zoom") for p, _ in watched)
    assert c.source == "<embedded default>"


def test_user_homes_are_the_people_with_a_login_and_a_home(tmp_path):
    from types import SimpleNamespace as P
    from guard.config import user_homes
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    alice.mkdir()
    bob.mkdir()
    defs = tmp_path / "login.defs"
    defs.write_text("# comment\nUID_MIN\t\t 2000\nUID_MAX 3000\n")
    rows = [P(pw_uid=2001, pw_shell="/bin/bash", pw_dir=str(alice)),
            P(pw_uid=2002, pw_shell="/usr/sbin/nologin", pw_dir=str(bob)),     # no login
            P(pw_uid=1500, pw_shell="/bin/sh", pw_dir=str(bob)),               # below UID_MIN
            P(pw_uid=2003, pw_shell="/bin/zsh", pw_dir=str(tmp_path / "gone")),  # no home
            P(pw_uid=2004, pw_shell="/bin/bash", pw_dir="/"),
            P(pw_uid=2005, pw_shell="/bin/bash", pw_dir=str(alice))]           # same home
    assert user_homes(rows, str(defs)) == [alice]
    assert user_homes(rows, str(tmp_path / "missing.defs")) == [alice, bob]      # 1000..60000
