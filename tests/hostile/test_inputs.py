"""Hostile cases 9 and 10: inputs and names an attacker controls.

9.  Malformed inputs. Mutants of the corpus's real PE, ELF, Mach-O, LNK, ZIP, ISO, OLE and
    PDF files (truncated, bit-flipped, boundary values, chunks moved), hand-built malformed
    headers, zip bombs (ratio, overlapping entries, depth 100, a million entries), a macro
    part and a PDF attachment that inflate to GiBs, a file with millions of YARA string
    matches, catastrophic YARA rules passed as an extra rules folder, a 1 TB sparse file,
    FIFOs without a writer, sockets and links to devices. Each batch is scanned in a child
    process (inputs_harness.py), so a segfault, a hang (no verdict within the deadline) or
    a runaway allocation is counted instead of taking the test down. Expected: no crash, no
    hang, every input within its CPU and memory budget, and every file that blows a limit
    says so (limit-exceeded or archive-bomb) and is never called clean.
10. Hostile names (inputs_names.py: newlines, ANSI/OSC escapes, C1 controls, bidi, invalid
    UTF-8, a name that is a whole fake audit record, 255-byte names, leading dashes,
    $(...), backticks, ;, |) given to a benign PDF and to a disguised program each, in a
    watched folder of the real agent (enforce mode, log_clean on, a `guardcanary` first on
    PATH that records being run). Expected: exactly one record per file whose file.path
    (or file.path_b64, decoded) is the exact name, no record for a name that was not
    dropped, `guard log verify` OK, `guard log tail` one line per record with no raw
    control or format character, `guard quarantine list` (and --json) working and listing
    what was quarantined, and no shell ever run (the canary never runs, no CANARY file).

Also here: every file under regressions/ (crashes found by the fuzzers in bench/fuzz, and
inputs that once broke a scan) is replayed through the scanner.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import inputs_malformed as mal
import inputs_names
import pytest
from figures import case, check
from inputs_harness import Budget, Group, Input, scan_groups

HERE = Path(__file__).resolve().parent
REGRESSIONS = HERE / "regressions"
BATCH = 60                  # inputs per child process
WORKERS = 2
FULL_FROM = 2000            # from this n on, the bombs are full size (GiBs, a million entries)


def _generated_groups(n: int, workdir: Path, budget: Budget):
    """Mutants in batches; each batch's files exist only while it is scanned."""
    batch: list[tuple[str, str, bytes]] = []
    k = 0

    def group(items) -> Group:
        nonlocal k
        folder = workdir / f"batch{k}"
        k += 1
        inputs = []
        for j, (label, name, data) in enumerate(items):
            sub = folder / str(j)
            sub.mkdir(parents=True)
            (sub / name).write_bytes(data)
            inputs.append(Input(str(sub / name), label))
        return Group(inputs, {}, budget, lambda: shutil.rmtree(folder, ignore_errors=True))

    for item in mal.generate(n):
        batch.append(item)
        if len(batch) == BATCH:
            yield group(batch)
            batch = []
    if batch:
        yield group(batch)


def _handmade_group(workdir: Path, budget: Budget) -> Group:
    folder = workdir / "handmade"
    inputs = []
    for j, (label, name, data, expect) in enumerate(mal.handmade()):
        sub = folder / str(j)
        sub.mkdir(parents=True)
        (sub / name).write_bytes(data)
        inputs.append(Input(str(sub / name), label, expect))
    return Group(inputs, {}, budget, lambda: shutil.rmtree(folder, ignore_errors=True))


def _regressions_group(workdir: Path, budget: Budget) -> Group:
    """The saved regression inputs, under the case's budgets too (the pytest replay below
    only checks the verdict)."""
    folder = workdir / "regressions"
    inputs = []
    for j, path in enumerate(_regression_files()):
        name, content = _regression_file(path)
        sub = folder / str(j)
        sub.mkdir(parents=True)
        (sub / name).write_bytes(content)
        expect = "limit" if REGRESSION_CODES.get(path.name) == "limit-exceeded" else ""
        inputs.append(Input(str(sub / name), f"regression:{path.name}", expect))
    return Group(inputs, {}, budget, lambda: shutil.rmtree(folder, ignore_errors=True))


@case("9", "Malformed inputs, bombs, hostile YARA, special files", fast=300, full=10_000,
      unit="inputs")
def malformed_inputs(n: int, workdir: Path) -> dict:
    full = n >= FULL_FROM
    # The agent's defaults: YARA may take its 10 s, so a hang is no verdict 10 s after that.
    budget = Budget(deadline_s=20.0, cpu_s=15.0, rss_mb=1024.0)
    yara_timeout = 10.0 if full else 2.0       # the catastrophic rules always run into it
    yara_budget = Budget(deadline_s=yara_timeout + 10, cpu_s=yara_timeout + 5, rss_mb=1024.0)
    rules_dir, yara_files = mal.yara_group(workdir, full)
    specials = [Input(p, label, expect, follow) for label, p, expect, follow in
                mal.specials(workdir, full)]

    def groups():
        yield Group(specials, {}, budget)
        yield _regressions_group(workdir, budget)
        yield Group([Input(p, label, expect) for label, p, expect in yara_files],
                    {"extra_rules": [rules_dir], "yara_timeout_s": yara_timeout}, yara_budget)
        yield _handmade_group(workdir, budget)
        yield from _generated_groups(n, workdir, budget)

    summary = scan_groups(groups(), workdir, WORKERS)
    report = os.environ.get("GUARD_INPUTS_REPORT")      # every input's figures, as JSON
    if report:
        import json
        Path(report).write_text(json.dumps(
            [{k: v for k, v in r.__dict__.items() if k != "budget"} for r in summary.results],
            indent=0, default=str))
    figures = summary.figures()
    figures["generated"] = n
    problems = summary.problems()
    figures["failures"] = (figures["crashes"] + figures["hangs"] + figures["over_budget"]
                           + figures["called_clean_wrongly"] + figures["unexpected_verdicts"])
    if problems:
        figures["problems"] = " | ".join(problems)
    return figures


def test_malformed_inputs(tmp_path):
    from figures import CASES
    check(CASES["9"].run(CASES["9"].fast, tmp_path))


# --- regressions: every saved input replays through the scanner ----------------------------

# Hand-built regressions that must also say why they were not fully checked.
REGRESSION_CODES = {"vba-part-80MiB--Invoice.docm": "limit-exceeded",
                    "vba-part-olefile-blowup--Invoice.docm": "limit-exceeded",
                    "pe-page-section-import-dir--Invoice.pdf": "type-mismatch"}


def _regression_files() -> list[Path]:
    if not REGRESSIONS.is_dir():
        return []
    return sorted(p for p in REGRESSIONS.iterdir() if p.is_file() and p.name != "README.md")


def _fuzz_targets():
    folder = str(HERE.parents[1] / "bench" / "fuzz")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    import targets
    return targets


def _regression_file(path: Path) -> tuple[str, bytes]:
    """(file name, content) a saved input is scanned as (see regressions/README.md)."""
    data = path.read_bytes()
    if "--" in path.name:
        return path.name.split("--", 1)[1], data
    return _fuzz_targets().as_file(path.name.split("-", 1)[0], data)


@pytest.mark.parametrize("path", _regression_files(), ids=lambda p: p.name)
def test_regression_inputs_get_a_verdict(scanner, tmp_path, path):
    """An input that once broke a scan stays fixed (see regressions/README.md): its fuzz
    target passes, and the scanner gives it a verdict, never an exception."""
    from guard.scanner import INTERNAL_ERROR
    from guard.verdict import Level, Verdict
    if "--" not in path.name:
        _fuzz_targets().replay(path.name.split("-", 1)[0], path.read_bytes())
    name, content = _regression_file(path)
    target_file = tmp_path / name
    target_file.write_bytes(content)
    v = scanner.scan_file(target_file)
    assert isinstance(v, Verdict) and v.level in Level
    assert v.error is None, v.error
    assert not any(r.detail.startswith(INTERNAL_ERROR) for r in v.reasons), v.reasons
    v.to_dict()
    if path.name in REGRESSION_CODES:
        assert REGRESSION_CODES[path.name] in v.codes and v.level is not Level.CLEAN, v.codes


# --- the fixes that case 9 found, one quick check each ---------------------------------------

def test_a_parser_exception_is_a_malformed_reason_not_a_lost_verdict(scanner, tmp_path,
                                                                  monkeypatch):
    """Defence in depth for the fail-open bugs above: whatever a parser lets out, the
    facts already gathered are judged (here: a program named like a PDF)."""
    import guard.scanner as sc
    from guard.verdict import Level

    def broken(*a, **k):
        raise KeyError("a parser bug")
    monkeypatch.setattr(sc, "inspect_pe", broken)
    path = tmp_path / "Invoice.pdf"
    import builders as b
    path.write_bytes(b.pe32())
    v = scanner.scan_file(path)
    assert v.level is Level.MALICIOUS and v.error is None, v.codes
    assert any(r.detail.startswith(sc.INTERNAL_ERROR) for r in v.reasons)


def test_file_too_large_to_hash_is_limit_exceeded_not_clean(scanner, tmp_path):
    """A 1 TB sparse file: hashing it would hold the scan for many minutes."""
    from guard.verdict import Level
    path = tmp_path / "backup.img"
    with open(path, "wb") as fh:
        fh.truncate(1 << 40)
    v = scanner.scan_file(path)
    assert "limit-exceeded" in v.codes and v.level is not Level.CLEAN, v.codes
    assert v.sha256 == "" and v.error is None and v.scan_ms < 5000


def test_a_million_matches_of_one_string_stop_yara(scanner, tmp_path):
    from guard.verdict import Level
    path = tmp_path / "notes.sh"
    path.write_bytes(b"|sh" * 1_100_000)
    v = scanner.scan_file(path)
    assert "limit-exceeded" in v.codes and v.level is not Level.CLEAN, v.codes
    assert any("matched more than" in r.detail for r in v.reasons), v.reasons


def test_zip_with_more_entries_than_the_limit_still_has_its_names_judged(scanner, tmp_path):
    """Listed from the central directory without zipfile's per-entry objects."""
    from guard.verdict import Level
    data = bytearray(mal.million_entries(12_000))
    first = data.index(b"PK\x01\x02")                 # rename central entry 0
    n_name = int.from_bytes(data[first + 28:first + 30], "little")
    name = b"Invoice.pdf.exe"
    data[first + 28:first + 30] = len(name).to_bytes(2, "little")
    data[first + 46:first + 46 + n_name] = name
    eocd = data.rindex(b"PK\x05\x06")
    cd_size = int.from_bytes(data[eocd + 12:eocd + 16], "little") + len(name) - n_name
    data[eocd + 12:eocd + 16] = cd_size.to_bytes(4, "little")
    z64 = data.rindex(b"PK\x06\x06")
    data[z64 + 40:z64 + 48] = cd_size.to_bytes(8, "little")
    path = tmp_path / "Archive.zip"
    path.write_bytes(bytes(data))
    v = scanner.scan_file(path)
    assert "archive-bomb" in v.codes and v.level is Level.MALICIOUS, v.codes
    assert "exec-in-container" in v.codes


def test_macro_part_that_inflates_past_the_limit_is_not_read(scanner, tmp_path):
    from guard.verdict import Level
    path = tmp_path / "Invoice.docm"
    path.write_bytes(mal.vba_part_bomb(80 << 20))
    v = scanner.scan_file(path)
    assert "limit-exceeded" in v.codes and v.level is not Level.CLEAN, v.codes


# --- case 10: hostile names in a watched folder of the real agent ---------------------------

_UNSAFE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def _raw_controls(line: bytes) -> bool:
    """True when a line of CLI output would put a control or format character (ESC, CR,
    C1, bidi, line separators) or undecodable bytes on the terminal."""
    import unicodedata
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return any(unicodedata.category(ch) in _UNSAFE for ch in text)


def _record_path(rec: dict) -> bytes | None:
    import base64
    f = rec.get("file")
    if not isinstance(f, dict) or "path" not in f:
        return None
    if "path_b64" in f:
        return base64.b64decode(f["path_b64"])
    return f["path"].encode("utf-8")


def _canary_bin(workdir: Path) -> tuple[Path, Path]:
    """A folder for the front of PATH with a `guardcanary` that records each run."""
    folder, log = workdir / "canary-bin", workdir / "canary.log"
    folder.mkdir()
    prog = folder / inputs_names.CANARY_PROGRAM
    prog.write_text(f'#!/bin/sh\necho "ran: $0 $*" >> "{log}"\n')
    prog.chmod(0o755)
    return folder, log


def _cli(cfg: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "guard", *args, "--config", str(cfg)],
                          check=False, capture_output=True, timeout=120, env=env)


@case("10", "Hostile names: newlines, escapes, bad UTF-8, fake records, shells",
      fast=len(inputs_names.names(0, fixed_only=True)), full=2000, unit="names")
def hostile_names(n: int, workdir: Path) -> dict:
    import json
    import time

    import builders as b
    from daemon_support import Agent, wait_until, write_config

    chosen = inputs_names.names(n)
    canary_dir, canary_log = _canary_bin(workdir)
    env = {**os.environ, "PATH": f"{canary_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    cfg = write_config(workdir, "enforce", "log_clean = true")
    down = workdir / "Downloads"
    kinds = {"benign": b.corpus_bytes("benign/pdf/pdf.pdf"), "disguised": b.pe32()}
    for kind in kinds:
        (down / kind).mkdir(parents=True)
    expected: dict[bytes, str] = {}
    agent = Agent(workdir, cfg)
    try:
        agent.start({"PATH": env["PATH"]})
        for name in chosen:
            for kind, data in kinds.items():
                path = os.fsencode(down / kind) + b"/" + name
                with open(path, "wb") as fh:
                    fh.write(data)
                expected[path] = kind

        def seen() -> bool:
            got = {_record_path(r) for r in agent.records()}
            return all(p in got for p in expected)
        wait_until(seen, 60.0 + 0.05 * len(expected), interval=0.5)
        time.sleep(1.5)                    # late duplicates would show up now
    finally:
        agent.stop()
    records = agent.records()
    down_prefix = os.fsencode(down) + b"/"
    per_path: dict[bytes, int] = {}
    unexpected = 0
    for rec in records:
        p = _record_path(rec)
        if p is None or not p.startswith(down_prefix):
            continue
        if p in expected:
            per_path[p] = per_path.get(p, 0) + 1
        else:
            unexpected += 1                # a name that came out split or changed
    records_ok = sum(1 for p in expected if per_path.get(p) == 1)
    missing = sum(1 for p in expected if p not in per_path)
    duplicated = sum(1 for p in expected if per_path.get(p, 0) > 1)

    verify = _cli(cfg, env, "log", "verify")
    tail = _cli(cfg, env, "log", "tail", "-n", str(len(records) + 100))
    tail_lines = tail.stdout.split(b"\n")
    if tail_lines and tail_lines[-1] == b"":
        tail_lines.pop()
    tail_raw = sum(_raw_controls(line) for line in tail_lines)
    qlist = _cli(cfg, env, "quarantine", "list")
    qjson = _cli(cfg, env, "quarantine", "list", "--json")
    q_lines = qlist.stdout.split(b"\n")[:-1] if qlist.stdout.endswith(b"\n") else \
        qlist.stdout.split(b"\n")
    q_raw = sum(_raw_controls(line) for line in q_lines)
    try:
        q_items = [json.loads(line) for line in qjson.stdout.splitlines() if line.strip()]
    except ValueError:
        q_items = None
    quarantined = sum(1 for r in records if (r.get("event") or {}).get("action") == "quarantine"
                      and (_record_path(r) or b"").startswith(down_prefix))
    q_ok = (qlist.returncode == 0 and qjson.returncode == 0 and q_items is not None
            and len(q_items) == quarantined and len(q_lines) == quarantined + 1)

    canary_runs = len(canary_log.read_text().splitlines()) if canary_log.exists() else 0
    places = {Path.cwd(), workdir, down, down / "benign", down / "disguised", Path("/"),
              Path("/tmp"), Path.home(), workdir / "state", workdir / "vault"}
    canary_files = sum(1 for d in places for c in inputs_names.CANARY_FILES
                       if (d / c).exists())
    injections = (canary_runs + canary_files + unexpected + tail_raw + q_raw
                  + abs(len(tail_lines) - len(records)))
    figures = {
        "names": len(chosen), "files": len(expected), "records_ok": records_ok,
        "missing": missing, "duplicated": duplicated, "injections": injections,
        "shell_runs": canary_runs + canary_files, "unexpected_records": unexpected,
        "tail_lines": len(tail_lines), "records": len(records), "tail_raw_controls": tail_raw,
        "log_verify_ok": int(verify.returncode == 0 and b"OK" in verify.stdout),
        "quarantine_list_ok": int(q_ok), "quarantined": quarantined,
    }
    figures["failures"] = ((len(expected) - records_ok) + injections
                           + (1 - figures["log_verify_ok"]) + (1 - figures["quarantine_list_ok"]))
    if figures["failures"]:
        bad = [os.fsdecode(p[len(down_prefix):]) for p in expected if per_path.get(p) != 1][:5]
        figures["problems"] = (f"not exactly one record: {[ascii(x) for x in bad]}; verify: "
                               f"{verify.stdout[-300:]!r} {verify.stderr[-300:]!r}; qlist rc "
                               f"{qlist.returncode} {qlist.stderr[-300:]!r}")
    return figures


def test_hostile_names(tmp_path):
    from figures import CASES
    check(CASES["10"].run(CASES["10"].fast, tmp_path))
