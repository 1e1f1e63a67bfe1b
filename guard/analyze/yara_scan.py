"""YARA: compile rule folders once, match bytes with per-file externals.

Rule files are compiled one by one first, so that a broken file is reported as
``file:line: message`` and skipped while the rest still load; the good files are then
compiled together, each in a namespace named after its path. The compiled set is
cached on disk keyed on the content of every file, so a restart with unchanged rules
loads instead of compiling.

The externals are the ones LOKI and THOR define (filename, filepath, extension,
filetype, md5, owner), so rule sets written for those scanners load unmodified.

Limits: a scan stops at ``timeout_s`` and as soon as one string has matched libyara's
maximum (a million times): both raise ``TimeoutError`` (``ScanLimitError`` for the
second). Importing this module sets libyara's process-wide ``max_match_data`` to 1 byte:
guard never reads matched bytes, and a million matches of a long regex would otherwise
keep up to 512 MB of copies. What remains: a *matching* rule's strings are turned into
Python objects by yara-python, up to a million per string (about 150 bytes each).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yara

from ..errors import RuleError
from ..identify.names import valid_text
from ..verdict import Level

RULE_SUFFIXES = (".yar", ".yara")
EXTERNALS: dict[str, str] = {
    "filename": "", "filepath": "", "extension": "", "filetype": "", "md5": "", "owner": "",
}
BUNDLED_RULES = Path(__file__).resolve().parent.parent / "rules"   # package data
_USES_MD5 = re.compile(rb"(?<![.\w])md5\b(?!\s*\()")   # the external, not hash.md5()
_YARA_ERROR_RE = re.compile(r"^(?P<path>.*)\((?P<line>\d+)\): (?:error: )?(?P<msg>.*)$", re.S)
MAX_STRING_MATCHES = 1_000_000     # libyara's YR_MAX_STRING_MATCHES (a build constant)
yara.set_config(max_match_data=1)


class ScanLimitError(TimeoutError):
    """A YARA scan stopped by a limit other than time (too many matches of one string),
    or that libyara could not finish. A TimeoutError, so callers that bound scans by
    time handle it the same way: the file was not fully checked."""


@dataclass(frozen=True)
class RuleHit:
    rule: str
    namespace: str
    tags: tuple[str, ...]
    meta: Mapping[str, Any] = field(hash=False, compare=False)

    @property
    def description(self) -> str:
        return str(self.meta.get("description", "")).strip()

    @property
    def severity(self) -> Level:
        """meta.severity if given; else LOKI's score scale (>=100 alert, >=60 warning)."""
        sev = str(self.meta.get("severity", "")).strip().lower()
        if sev in ("malicious", "critical", "high", "alert"):
            return Level.MALICIOUS
        if sev in ("suspicious", "medium", "warning"):
            return Level.SUSPICIOUS
        if sev in ("clean", "info", "low", "informational"):
            return Level.CLEAN
        try:
            score = int(self.meta.get("score", 75))
        except (TypeError, ValueError):
            score = 75
        if score >= 100:
            return Level.MALICIOUS
        return Level.SUSPICIOUS if score >= 60 else Level.CLEAN


class RuleSet:
    """Compiled rules plus what could not be loaded. Immutable after construction."""

    def __init__(self, rules: "yara.Rules | None", files: Sequence[Path],
                 errors: Sequence[RuleError], fingerprint: str, needs_md5: bool = False):
        self._rules = rules
        self.needs_md5 = needs_md5      # computing md5 for every file costs; only if used
        self.files = tuple(files)
        self.errors = tuple(errors)
        self.fingerprint = fingerprint

    def __len__(self) -> int:
        return len(self.files)

    @property
    def rule_count(self) -> int:
        """How many rules compiled (private and global ones included)."""
        return sum(1 for _ in self._rules) if self._rules is not None else 0

    def match(self, data: bytes, externals: Mapping[str, str], timeout_s: float = 10.0
              ) -> list[RuleHit]:
        """Match *data*. Raises ``TimeoutError`` when the scan exceeds *timeout_s*, and
        its subclass ``ScanLimitError`` when a string matches too often or libyara fails."""
        if self._rules is None:
            return []
        ext = {k: valid_text(str(externals.get(k, ""))) for k in EXTERNALS}
        too_many: list[str] = []

        def on_warning(kind: int, what: Any) -> int:
            # A string with a million matches: libyara would go on (string disabled, its
            # matches kept) and yara-python would then build a Python object per match.
            if kind == yara.CALLBACK_TOO_MANY_MATCHES:
                too_many.append(f"{getattr(what, 'rule', '?')} {getattr(what, 'string', '?')}")
                return yara.CALLBACK_ABORT
            return yara.CALLBACK_CONTINUE

        try:
            # fast: a string only ever tested for presence stops at its first match
            # (libyara keeps counting strings used with #, @, !, at, in and `of`).
            matches = self._rules.match(data=data, externals=ext,
                                        timeout=max(1, int(round(timeout_s))), fast=True,
                                        warnings_callback=on_warning)
        except yara.TimeoutError as exc:
            raise TimeoutError(f"YARA scan exceeded {timeout_s:g} s") from exc
        except yara.Error as exc:
            if too_many:
                raise ScanLimitError(f"YARA scan stopped: string {too_many[0]} matched more "
                                     f"than {MAX_STRING_MATCHES:,} times") from exc
            raise ScanLimitError(f"YARA scan failed: {exc}") from exc
        return [RuleHit(m.rule, m.namespace, tuple(m.tags), dict(m.meta)) for m in matches]

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        if self._rules is not None:
            self._rules.save(file=buf)
        return buf.getvalue()


def find_rule_files(dirs: Iterable[str | os.PathLike[str]]) -> tuple[list[Path], list[RuleError]]:
    """Every .yar/.yara below each folder (or the file itself), sorted, deduplicated."""
    found: dict[Path, None] = {}
    errors: list[RuleError] = []
    for d in dirs:
        root = Path(d)
        if root.is_file():
            found[root.resolve()] = None
            continue
        if not root.is_dir():
            errors.append(RuleError("rules folder not found or not a folder", path=str(root)))
            continue
        walk_errors: list[OSError] = []
        for dirpath, dirnames, filenames in os.walk(root, onerror=walk_errors.append):
            dirnames.sort()
            for name in sorted(filenames):
                if name.lower().endswith(RULE_SUFFIXES):
                    found[(Path(dirpath) / name).resolve()] = None
        errors.extend(RuleError(e.strerror or str(e), path=e.filename) for e in walk_errors)
    return list(found), errors


def _rule_error(exc: Exception, path: Path) -> RuleError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    m = _YARA_ERROR_RE.match(text)
    if m:
        return RuleError(m["msg"].strip(), path=m["path"] or str(path), line=int(m["line"]))
    return RuleError(text, path=str(path))


def _namespace(path: Path, index: int) -> str:
    return f"{index}:{path.name}"


def compile_rules(dirs: Iterable[str | os.PathLike[str]], cache_dir: Path | None = None
                  ) -> RuleSet:
    """Compile every rule file under *dirs*; broken files are skipped and reported.

    Never raises for a broken rule: the errors are in ``RuleSet.errors``.
    """
    files, errors = find_rule_files(dirs)
    contents: list[tuple[Path, bytes]] = []
    for path in files:
        try:
            contents.append((path, path.read_bytes()))
        except OSError as exc:
            errors.append(RuleError(exc.strerror or str(exc), path=str(path)))
    digest = hashlib.sha256(f"yara {yara.__version__} {sorted(EXTERNALS)}".encode())
    for path, data in contents:
        digest.update(str(path).encode("utf-8", "surrogateescape") + b"\0")
        digest.update(hashlib.sha256(data).digest())
    fingerprint = digest.hexdigest()

    needs_md5 = any(_USES_MD5.search(data) for _, data in contents)
    cached = _load_cached(cache_dir, fingerprint)
    if cached is not None:
        rules, good, cached_errors = cached
        return RuleSet(rules, good, errors + cached_errors, fingerprint, needs_md5)

    good: list[Path] = []
    compile_errors: list[RuleError] = []
    for path, _ in contents:
        try:
            yara.compile(filepath=str(path), externals=EXTERNALS)
        except yara.SyntaxError as exc:
            compile_errors.append(_rule_error(exc, path))
            continue
        except yara.Error as exc:
            compile_errors.append(_rule_error(exc, path))
            continue
        good.append(path)
    rules = None
    if good:
        rules = yara.compile(
            filepaths={_namespace(p, i): str(p) for i, p in enumerate(good)},
            externals=EXTERNALS)
    ruleset = RuleSet(rules, good, errors + compile_errors, fingerprint, needs_md5)
    _store_cached(cache_dir, ruleset, compile_errors)
    return ruleset


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "guard" / "rules"


def _load_cached(cache_dir: Path | None, fingerprint: str):
    if cache_dir is None:
        return None
    blob = cache_dir / f"{fingerprint}.yarc"
    index = cache_dir / f"{fingerprint}.idx"
    try:
        lines = index.read_text("utf-8", "surrogateescape").splitlines()
        rules = yara.load(filepath=str(blob)) if blob.stat().st_size else None
    except (OSError, yara.Error, UnicodeDecodeError):
        return None
    good = [Path(x[5:]) for x in lines if x.startswith("good ")]
    errs = []
    for x in lines:
        if x.startswith("fail "):
            path, _, rest = x[5:].partition("\t")
            line, _, msg = rest.partition("\t")
            errs.append(RuleError(msg, path=path, line=int(line) if line.isdigit() else None))
    return rules, good, errs


def _store_cached(cache_dir: Path | None, ruleset: RuleSet, errors: Sequence[RuleError]) -> None:
    """Best effort: a cache that cannot be written only costs a compile next time."""
    if cache_dir is None:
        return
    try:
        cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lines = [f"good {p}" for p in ruleset.files]
        lines += [f"fail {e.path}\t{e.line or ''}\t{e.message}" for e in errors]
        for suffix, payload in ((".yarc", ruleset.to_bytes()),
                                (".idx", "\n".join(lines).encode("utf-8", "surrogateescape"))):
            final = cache_dir / f"{ruleset.fingerprint}{suffix}"
            tmp = final.with_name(f".{final.name}.{os.getpid()}")
            tmp.write_bytes(payload)
            os.replace(tmp, final)
    except OSError:
        pass
