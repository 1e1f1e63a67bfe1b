"""Tests for the project's bundled YARA rules (rules/*.yar).

* rules/ compiles through guard.analyze.yara_scan.compile_rules with no broken files, and
  yara itself raises no warning (slow strings, unbounded regexes) for any file;
* every rule has the required meta and a severity of malicious or suspicious;
* every rule has at least one benign positive sample in tests/rule_samples.py, and each
  sample makes that exact rule fire, with filetype empty and with a plausible filetype;
  a rule added later without a sample fails test_every_rule_has_a_positive_sample;
* no rule fires on any file of tests/corpus/benign, whatever filetype is passed, nor on
  the near misses, nor on the corpus executables under their honest names;
* worst-case inputs scan quickly.
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import pytest
import yara

from guard.analyze.yara_scan import EXTERNALS, RuleSet, compile_rules
from guard.verdict import Level

try:  # tests/ may or may not be a package
    from .rule_samples import (ALL_FILETYPES, CORPUS, NEAR_MISSES, POSITIVE, RULES_DIR,
                               externals)
except ImportError:
    from rule_samples import ALL_FILETYPES, CORPUS, NEAR_MISSES, POSITIVE, RULES_DIR, externals

REQUIRED_META = ("description", "reference", "severity", "date", "author")
SEVERITIES = {"malicious": Level.MALICIOUS, "suspicious": Level.SUSPICIOUS}
RULE_DECL = re.compile(
    r"^[ \t]*(?P<mods>(?:(?:private|global)[ \t]+)*)rule[ \t]+(?P<name>[A-Za-z_][A-Za-z0-9_]*)",
    re.M)

# A content sniffer's plausible answer for each folder of tests/corpus/benign; used when
# the scanner's own identifier cannot be imported or fails.
PLAUSIBLE_FILETYPE = {
    "pdf": "PDF", "docx": "OOXML", "xlsx": "OOXML", "pptx": "OOXML", "docm": "OOXML",
    "doc": "OLE", "xls": "OLE", "outlook": "OLE", "rtf": "RTF", "zip": "ZIP", "epub": "ZIP",
    "odt": "ODF", "ods": "ODF", "odp": "ODF", "xps": "ZIP", "7z": "7Z", "iso": "ISO",
    "rar": "RAR", "cab": "CAB", "gz": "GZ", "bz2": "BZ2", "xz": "XZ", "tar": "TAR",
    "txt": "TEXT", "csv": "TEXT", "tsv": "TEXT", "markdown": "TEXT", "ini": "TEXT",
    "json": "TEXT", "xml": "TEXT", "html": "TEXT", "eml": "TEXT", "svg": "TEXT",
}


def plausible_filetypes(path: Path, data: bytes) -> tuple[str, ...]:
    """What the scanner reports for *path* (when importable) and the folder's usual type."""
    kinds = ["", PLAUSIBLE_FILETYPE.get(path.parent.name, "")]
    try:
        from guard.identify.filetype import identify, yara_filetype
        ftype = identify(data[:256 * 1024], path.suffix.lstrip(".").lower(), data[-512:])
        kinds.append(yara_filetype(ftype) if ftype else "")
    except Exception:  # the rules tests must not depend on the scanner's internals
        pass
    return tuple(dict.fromkeys(kinds))


def rule_files() -> list[Path]:
    return sorted(p for p in RULES_DIR.rglob("*") if p.suffix.lower() in (".yar", ".yara"))


def _strip_comments(src: str) -> str:
    """Drop /* */ and // comments outside string literals and regexes, keep line breaks."""
    out, i, n = [], 0, len(src)
    while i < n:
        c = src[i]
        if c == '"':
            j = i + 1
            while j < n and src[j] != '"' and src[j] != "\n":
                j += 2 if src[j] == "\\" else 1
            out.append(src[i:j + 1])
            i = j + 1
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("\n" * src.count("\n", i, j))
            i = j
        elif src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def declared_rules() -> dict[str, tuple[Path, bool]]:
    """rule name -> (file, is_private), parsed from the `rule NAME` declarations."""
    found: dict[str, tuple[Path, bool]] = {}
    for path in rule_files():
        for m in RULE_DECL.finditer(_strip_comments(path.read_text("utf-8"))):
            name = m["name"]
            assert name not in found, f"rule {name} declared twice ({found[name][0]}, {path})"
            found[name] = (path, "private" in m["mods"])
    return found


@pytest.fixture(scope="module")
def ruleset() -> RuleSet:
    return compile_rules([RULES_DIR])


@pytest.fixture(scope="module")
def compiled_rules() -> dict[str, yara.Rule]:
    rules = yara.compile(filepaths={f"{i}:{p.name}": str(p) for i, p in enumerate(rule_files())},
                         externals=EXTERNALS)
    return {r.identifier: r for r in rules}


def hits_for(ruleset: RuleSet, data: bytes, name: str, filetype: str = "") -> dict:
    return {h.rule: h for h in ruleset.match(data, externals(name, data, filetype), timeout_s=10)}


def _require_corpus() -> None:
    if not (CORPUS / "benign").is_dir():
        pytest.fail(f"test corpus not found at {CORPUS} (tests/corpus in the repository)")


# --------------------------------------------------------------------------- compilation

def test_rules_folder_has_rule_files():
    assert len(rule_files()) >= 5


def test_bundled_rules_compile_without_errors(ruleset):
    assert ruleset.errors == (), "\n".join(str(e) for e in ruleset.errors)
    assert len(ruleset) == len(rule_files())


@pytest.mark.parametrize("path", rule_files(), ids=lambda p: p.name)
def test_rule_file_compiles_without_yara_warnings(path):
    """error_on_warning turns 'may slow down scanning' and '.*' warnings into failures."""
    yara.compile(filepath=str(path), externals=EXTERNALS, error_on_warning=True)


def test_parsed_rule_names_match_compiled_rules(compiled_rules):
    assert set(declared_rules()) == set(compiled_rules)


# --------------------------------------------------------------------------- meta

@pytest.mark.parametrize("name", sorted(declared_rules()))
def test_rule_meta(name, compiled_rules):
    meta = compiled_rules[name].meta
    missing = [k for k in REQUIRED_META if not str(meta.get(k, "")).strip()]
    assert not missing, f"{name}: missing meta {missing}"
    assert meta["severity"] in SEVERITIES, f"{name}: severity {meta['severity']!r}"
    assert re.fullmatch(r"https://[^\s\"']+", meta["reference"]), f"{name}: reference"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", meta["date"]), f"{name}: date"
    assert meta["author"] == "guard project", f"{name}: author"
    desc = meta["description"]
    assert desc.endswith(".") and "\n" not in desc, f"{name}: description is not one sentence"
    assert not re.search(r"[.!?]\s+[A-Z]", desc), f"{name}: description has several sentences"


# --------------------------------------------------------------------------- positives

def test_every_rule_has_a_positive_sample():
    public = {n for n, (_, private) in declared_rules().items() if not private}
    missing = sorted(public - set(POSITIVE))
    assert not missing, f"rules without a positive sample in tests/rule_samples.py: {missing}"
    stale = sorted(set(POSITIVE) - public)
    assert not stale, f"samples for rules that do not exist: {stale}"
    assert all(POSITIVE[n] for n in public), "a rule has an empty sample list"


POSITIVE_CASES = [(rule, s) for rule, samples in sorted(POSITIVE.items()) for s in samples]


@pytest.mark.parametrize(
    "rule,sample", POSITIVE_CASES,
    ids=[f"{r}-{s.name}".encode("ascii", "backslashreplace").decode() for r, s in POSITIVE_CASES])
def test_rule_fires_on_its_sample(ruleset, compiled_rules, rule, sample):
    data = sample.data()
    for filetype in dict.fromkeys(("", sample.filetype)):
        hits = hits_for(ruleset, data, sample.name, filetype)
        assert rule in hits, (f"{rule} did not fire on {sample.name!r} "
                              f"(filetype={filetype!r}); got {sorted(hits)}")
        hit = hits[rule]
        assert hit.severity is SEVERITIES[compiled_rules[rule].meta["severity"]]
        assert hit.description == compiled_rules[rule].meta["description"]


# --------------------------------------------------------------------------- negatives

def _benign_files() -> list[Path]:
    return sorted(p for p in (CORPUS / "benign").rglob("*") if p.is_file())


def test_no_rule_fires_on_benign_corpus(ruleset):
    _require_corpus()
    files = _benign_files()
    assert len(files) >= 60, f"benign corpus looks incomplete: {len(files)} files"
    flagged = []
    for path in files:
        data = path.read_bytes()
        for filetype in plausible_filetypes(path, data):
            ext = externals(path.name, data, filetype)
            ext["filepath"] = str(path)
            hits = ruleset.match(data, ext, timeout_s=10)
            flagged += [(str(path.relative_to(CORPUS)), filetype, h.rule) for h in hits]
    assert not flagged, f"rules fired on benign files: {flagged}"


def test_no_rule_fires_on_benign_corpus_for_any_filetype(ruleset):
    _require_corpus()
    flagged = []
    for path in _benign_files():
        data = path.read_bytes()
        for filetype in ALL_FILETYPES:
            hits = ruleset.match(data, externals(path.name, data, filetype), timeout_s=10)
            flagged += [(path.name, filetype, h.rule) for h in hits]
    assert not flagged, f"rules fired on benign files: {flagged}"


@pytest.mark.parametrize("sample", NEAR_MISSES, ids=lambda s: s.name)
def test_no_rule_fires_on_near_miss(ruleset, sample):
    data = sample.data()
    for filetype in dict.fromkeys(("", sample.filetype)):
        hits = hits_for(ruleset, data, sample.name, filetype)
        assert not hits, f"{sorted(hits)} fired on near miss {sample.name!r} ({sample.note})"


def test_no_rule_fires_on_corpus_executables_under_their_own_names(ruleset):
    """Executables named as what they are are not *disguised*; scripts here are benign."""
    _require_corpus()
    flagged = []
    for kind in ("pe", "elf", "macho", "other", "lnk", "script"):
        for path in sorted((CORPUS / "executables" / kind).iterdir()):
            data = path.read_bytes()
            flagged += [(path.name, h.rule) for h in ruleset.match(data, externals(path.name, data))]
    assert not flagged, f"rules fired on honestly named executables: {flagged}"


# --------------------------------------------------------------------------- performance

def test_compile_and_corpus_scan_are_fast():
    _require_corpus()
    start = time.perf_counter()
    rs = compile_rules([RULES_DIR])
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for path in _benign_files():
        data = path.read_bytes()
        rs.match(data, externals(path.name, data), timeout_s=10)
    scan_s = time.perf_counter() - start
    assert compile_s < 5, f"compiling rules/ took {compile_s:.2f}s"
    assert scan_s < 5, f"scanning the benign corpus took {scan_s:.2f}s"


STRESS_CHUNK = (
    b"curl powershell mshta http:// do shell script | sh Attribute VB_Name "
    b"AutoOpen Exec= URL=file: [InternetShortcut] ssh_kill import "
    b"Exec=curl -s a.b.c.d wget x.y.z URL=file://a.b.c.d.e.f IconFile=\\\\a "
    b"mshta https://a.b certutil urlcache base64 -d a.b.c | sh [Desktop Entry] "
    b"curl -o a.b & chmod 777 x ; iex( DownloadString WScript.Shell .Run ")


@pytest.mark.parametrize("kind", ["newlines", "spaces-utf16", "zeros", "random", "keywords",
                                  "keywords-utf16", "keywords-lines"])
def test_worst_case_inputs_scan_quickly(ruleset, kind):
    """Dense rule atoms without line breaks are the worst case for the bounded regexes."""
    size = 4 * 1024 * 1024
    keywords = (STRESS_CHUNK * (size // len(STRESS_CHUNK) + 1))[:size]
    data = {
        "newlines": lambda: b"\n" * size,
        "spaces-utf16": lambda: " ".encode("utf-16-le") * (size // 2),
        "zeros": lambda: b"\0" * size,
        "random": lambda: random.Random(1234).randbytes(size),
        "keywords": lambda: keywords,
        "keywords-utf16": lambda: keywords[:size // 2].decode("latin-1").encode("utf-16-le"),
        "keywords-lines": lambda: keywords.replace(b" ", b"\n", 4096),
    }[kind]()
    start = time.perf_counter()
    ruleset.match(data, externals("big.scpt"), timeout_s=30)
    elapsed = time.perf_counter() - start
    assert elapsed < 4, f"scanning 4 MiB of {kind} took {elapsed:.2f}s"
