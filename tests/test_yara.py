"""YARA loading: errors with file:line, LOKI externals, content-keyed cache, time limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from guard.analyze.yara_scan import compile_rules
from guard.scanner import ScanOptions, Scanner
from guard.verdict import Level


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_each_broken_file_reported_with_line_and_skipped(tmp_path):
    d = tmp_path / "r"
    _write(d, "ok.yar", 'rule ok { strings: $a = "OK-MARK" condition: $a }')
    _write(d, "sub/also_ok.yara", 'rule also { condition: filesize == 3 }')
    _write(d, "unknown_ident.yar", "rule u {\n condition:\n  no_such_thing\n}\n")
    _write(d, "missing_include.yar", 'include "nowhere.yar"\nrule m { condition: true }\n')
    _write(d, "notes.txt", "not a rule file, ignored")
    rs = compile_rules([d])
    assert sorted(p.name for p in rs.files) == ["also_ok.yara", "ok.yar"]
    errs = {Path(e.path).name: e for e in rs.errors}
    assert set(errs) == {"unknown_ident.yar", "missing_include.yar"}
    assert errs["unknown_ident.yar"].line == 3
    assert str(errs["unknown_ident.yar"]).startswith(f"{d / 'unknown_ident.yar'}:3: ")
    assert [h.rule for h in rs.match(b"OK-MARK", {})] == ["ok"]


def test_same_rule_name_in_two_files_loads_both(tmp_path):
    d = tmp_path / "r"
    _write(d, "a.yar", 'rule dup { strings: $a = "AAA" condition: $a }')
    _write(d, "b.yar", 'rule dup { strings: $b = "BBB" condition: $b }')
    rs = compile_rules([d])
    assert not rs.errors
    assert len(rs.match(b"AAA BBB", {})) == 2


def test_loki_style_rules_load_unmodified_and_score_maps_to_severity(tmp_path):
    d = tmp_path / "loki"
    _write(d, "thor.yar", '''
rule Loki_Style_Ext {
  meta: description = "exe in user folder" score = 100
  condition: uint16(0) == 0x5A4D and extension == ".pdf" and filetype == "EXE"
             and filename matches /contract/i and filepath contains "/" and owner != ""
             and md5 != ""
}
rule Loki_Low { meta: score = 40 condition: filesize > 0 and filename contains "Contract" }
''')
    rs = compile_rules([d])
    assert not rs.errors and rs.needs_md5
    from builders import pe32
    sample = tmp_path / "data" / "Contract.pdf"
    sample.parent.mkdir()
    sample.write_bytes(pe32())
    v = Scanner(rs).scan_file(sample)
    hits = {r.detail.split(":")[-1]: r.severity for r in v.reasons if r.code == "yara-match"}
    assert hits == {"Loki_Style_Ext": Level.MALICIOUS, "Loki_Low": Level.CLEAN}


def test_compiled_rules_are_cached_by_content(tmp_path):
    d, cache = tmp_path / "r", tmp_path / "cache"
    rule = _write(d, "x.yar", 'rule x { strings: $a = "XX-1" condition: $a }')
    first = compile_rules([d], cache_dir=cache)
    assert len(list(cache.glob("*.yarc"))) == 1
    again = compile_rules([d], cache_dir=cache)
    assert again.fingerprint == first.fingerprint
    assert [h.rule for h in again.match(b"XX-1", {})] == ["x"]
    rule.write_text('rule x { strings: $a = "XX-2" condition: $a }')
    changed = compile_rules([d], cache_dir=cache)
    assert changed.fingerprint != first.fingerprint
    assert changed.match(b"XX-1", {}) == [] and changed.match(b"XX-2", {})


def test_broken_cache_file_is_recompiled(tmp_path):
    d, cache = tmp_path / "r", tmp_path / "cache"
    _write(d, "x.yar", 'rule x { strings: $a = "XX-1" condition: $a }')
    first = compile_rules([d], cache_dir=cache)
    (cache / f"{first.fingerprint}.yarc").write_bytes(b"garbage")
    again = compile_rules([d], cache_dir=cache)
    assert [h.rule for h in again.match(b"XX-1", {})] == ["x"]


def test_missing_rules_folder_is_an_error_not_a_crash(tmp_path):
    rs = compile_rules([tmp_path / "nope"])
    assert len(rs) == 0 and "not found" in str(rs.errors[0])


@pytest.mark.timeout(60)
def test_slow_rule_hits_the_time_limit(tmp_path):
    d = tmp_path / "slow"
    _write(d, "slow.yar", '''
rule quadratic {
  condition:
    for any i in (0..filesize - 1) : (
      for any j in (0..filesize - 1) : ( uint8(i) == uint8(j) + 200 ) )
}
''')
    rs = compile_rules([d])
    assert not rs.errors
    sample = tmp_path / "zeros.pdf"
    sample.write_bytes(b"%PDF-1.4\n" + b"\0" * 3_000_000)
    v = Scanner(rs, ScanOptions(yara_timeout_s=1)).scan_file(sample)
    assert "limit-exceeded" in v.codes
    assert v.level is not Level.CLEAN
