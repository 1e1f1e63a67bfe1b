"""judge(): facts about one file in, its Verdict level and reasons out.

Pure: no I/O, no clock, no globals beyond constant tables. Every reason carries one
sentence an employee understands; the detail is for the SOC.

The rule of the verdict:
- malicious: something that runs (program, script, shortcut) presented as something
  else: under a document/media/archive extension, behind a double extension, a bidi
  control or padding, named like a document, inside a container under such a name, or
  embedded in an Office or PDF document;
- suspicious: honest programs, scripts and shortcuts, containers holding them under
  honest names, macro documents, PDFs with active content, anything we could not check;
- clean: everything else.
"""

from __future__ import annotations

from ..identify.containers import Member
from ..identify.names import NameFacts, analyze_name, is_text_claim, printable
from ..identify.sample import Sample
from ..verdict import (INERT, Action, Code, Decision, Family, FileType, Level, Mode, Reason,
                       Skip, Verdict)

M, S, C = Level.MALICIOUS, Level.SUSPICIOUS, Level.CLEAN

_KIND_WORDS = {
    "pe": "a Windows program", "dos": "a DOS/Windows program", "elf": "a Linux program",
    "macho": "a macOS program", "macho-fat": "a macOS program", "java-class": "a Java program",
    "jar": "a Java program", "msi": "a Windows installer", "lnk": "a Windows shortcut",
    "url": "an internet shortcut", "desktop": "a Linux desktop launcher",
    "scf": "a Windows Explorer command file", "webloc": "a macOS web shortcut",
    "js": "a JavaScript script", "vbs": "a VBScript script", "ps1": "a PowerShell script",
    "hta": "an HTML application (HTA)", "bat": "a Windows batch script", "sh": "a shell script",
    "python": "a Python script", "perl": "a Perl script", "ruby": "a Ruby script",
    "applescript": "an AppleScript", "php": "a PHP script",
}
_PE_KIND_WORDS = {"dll": "a Windows library (DLL)", "driver": "a Windows driver",
                  "efi": "a UEFI program"}
_FAMILY_WORDS = {
    Family.EXECUTABLE: "a program", Family.SCRIPT: "a script", Family.SHORTCUT: "a shortcut",
    Family.DOCUMENT: "a document", Family.IMAGE: "an image", Family.AUDIO: "an audio file",
    Family.VIDEO: "a video", Family.ARCHIVE: "an archive", Family.DISK_IMAGE: "a disk image",
    Family.OTHER: "a file",
}
_EXT_WORDS = {
    "pdf": "a PDF", "doc": "a Word document", "docx": "a Word document",
    "docm": "a Word document", "rtf": "a Word document", "odt": "a text document",
    "xls": "an Excel spreadsheet", "xlsx": "an Excel spreadsheet", "xlsm": "an Excel spreadsheet",
    "csv": "a spreadsheet", "ppt": "a PowerPoint presentation",
    "pptx": "a PowerPoint presentation", "txt": "a text file", "jpg": "a picture",
    "jpeg": "a picture", "png": "a picture", "gif": "a picture", "mp4": "a video",
    "mov": "a video", "mp3": "an audio file", "zip": "a zip archive", "rar": "a RAR archive",
    "7z": "a 7-Zip archive", "iso": "a disk image", "img": "a disk image",
}
# Containers whose members are parts of one document: a program inside is embedded.
_DOCUMENT_CONTAINERS = frozenset({"ooxml", "odf", "epub", "ole", "pdf"})


def describe_type(ftype: FileType | None, pe_kind: str = "") -> str:
    if ftype is None:
        return "a file"
    if ftype.kind == "pe" and pe_kind in _PE_KIND_WORDS:
        return _PE_KIND_WORDS[pe_kind]
    return _KIND_WORDS.get(ftype.kind) or _FAMILY_WORDS[ftype.family]


def describe_claim(ext: str, family: Family) -> str:
    return _EXT_WORDS.get(ext) or _FAMILY_WORDS[family]


def _content_runs(ftype: FileType | None, name: NameFacts, allow_guess: bool = True) -> bool:
    """True when the content is code that runs when opened under this name.

    A script body under a name that claims text (notes.txt, snippet.md) opens in an
    editor, not an interpreter: no disguise there.
    """
    if ftype is None or not ftype.family.runs or (ftype.guessed and not allow_guess):
        return False
    return not (ftype.family is Family.SCRIPT and is_text_claim(name.extension))


def _runs(ftype: FileType | None, name: NameFacts, allow_guess: bool = True) -> bool:
    """True when opening the file starts code: by content, or by what the OS sees."""
    return _content_runs(ftype, name, allow_guess) or name.claimed.runs


def _name_disguises(name: NameFacts, runs: bool, what: str, shown: str) -> list[Reason]:
    """Reasons for names built to hide the real type. *what* says what the file really is."""
    out: list[Reason] = []
    sev = M if runs else S
    if name.inner_claimed is not None and name.claimed.runs and name.inner_claimed in INERT:
        looks = describe_claim(name.inner_extension, name.inner_claimed)
        out.append(Reason(Code.DOUBLE_EXTENSION, sev,
                          f"'{shown}' is {what} whose name pretends to be {looks}.",
                          f"extensions .{name.inner_extension}.{name.extension}"))
    if name.bidi_controls:
        out.append(Reason(Code.BIDI_OVERRIDE, sev,
                          f"'{shown}' uses hidden characters that reverse part of its name to "
                          f"hide what it really is: {what}.",
                          "bidi controls " + " ".join(name.bidi_controls)))
    if name.padded:
        out.append(Reason(Code.PADDED_NAME, sev,
                          f"'{shown}' hides the real end of its name behind a long run of "
                          f"blank characters; it is {what}.", "padding before the extension"))
    if name.lure_token and runs and not out:
        looks = describe_claim(name.lure_token, Family.DOCUMENT)
        out.append(Reason(Code.LURE_NAME, M,
                          f"'{shown}' is {what} named to look like {looks}.",
                          f"'{name.lure_token}' ends the name of a .{name.extension} file"))
    return out


def _file_reasons(s: Sample, shown: str) -> list[Reason]:
    ftype, name = s.type, s.name
    pe_kind = s.pe.kind if s.pe else ""
    what = describe_type(ftype, pe_kind)
    runs = _runs(ftype, name)
    reasons = _name_disguises(name, runs, what, shown)
    content_runs = _content_runs(ftype, name)
    if content_runs and name.claimed in INERT:
        reasons.append(Reason(
            Code.TYPE_MISMATCH, M,
            f"'{shown}' is {what}, not {describe_claim(name.extension, name.claimed)}.",
            f"content {ftype.kind or ftype.mime} ({ftype.description}); name ends "
            f".{name.extension}"))
    if runs and not any(r.severity is M for r in reasons):
        if not content_runs:
            what = _KIND_WORDS.get(name.extension) or _FAMILY_WORDS[name.claimed]
        reasons.append(Reason(Code.EXECUTABLE, S,
                              f"'{shown}' is {what}; open it only if you know who sent it "
                              f"and expected it.",
                              f"content {ftype.kind if ftype else '?'}; name .{name.extension}"))
    if s.shortcut is not None and (s.shortcut.runners or s.shortcut.remote):
        starts = ", ".join(s.shortcut.runners) or "a program on a remote share"
        reasons.append(Reason(Code.LNK_COMMAND, S,
                              f"'{shown}' is a shortcut that starts {starts}.",
                              f"target {s.shortcut.target!r} arguments "
                              f"{s.shortcut.arguments[:300]!r}"))
    if s.macros is not None and s.macros.any:
        kinds = " and ".join(k for k, v in (("VBA", s.macros.vba), ("Excel 4.0", s.macros.xlm))
                             if v)
        reasons.append(Reason(Code.MACRO_DOCUMENT, S,
                              f"'{shown}' contains macros (code that runs if you enable "
                              f"content); do not enable them unless you trust the sender.",
                              f"{kinds} macros"))
    if s.pdf is not None and s.pdf.active:
        reasons.append(Reason(Code.PDF_ACTIVE_CONTENT, S,
                              f"'{shown}' contains {' and '.join(s.pdf.active)} that can run "
                              f"when it is opened.",
                              " ".join(f"{k}={v}" for k, v in sorted(s.pdf.keywords.items()))))
    return reasons


def _disguised_as(name: NameFacts) -> str:
    if name.inner_claimed in INERT:
        return f", disguised as {describe_claim(name.inner_extension, name.inner_claimed)}"
    if name.claimed in INERT:
        return f", disguised as {describe_claim(name.extension, name.claimed)}"
    if name.lure_token:
        return f", named to look like {describe_claim(name.lure_token, Family.DOCUMENT)}"
    return ", under a disguised name"


def _member_reasons(s: Sample, shown: str) -> list[Reason]:
    facts = s.container
    if facts is None:
        return []
    reasons: list[Reason] = []
    outer_disguised = s.name.claimed in (Family.DOCUMENT, Family.IMAGE, Family.AUDIO,
                                         Family.VIDEO) and s.type is not None and \
        s.type.family in (Family.ARCHIVE, Family.DISK_IMAGE)
    worst: tuple[Level, Member, str] | None = None
    embedded: Member | None = None
    count = 0
    for m in facts.members:
        mname = analyze_name(m.name)
        in_document = m.container in _DOCUMENT_CONTAINERS
        content_runs = _content_runs(m.type, mname, allow_guess=False)
        runs = content_runs if in_document else _runs(m.type, mname, allow_guess=False)
        if not runs:
            continue
        count += 1
        if in_document:
            embedded = embedded or m
            continue
        what = describe_type(m.type)
        disguises = _name_disguises(mname, True, what, printable(m.name))
        if content_runs and mname.claimed in INERT:
            disguises.append(Reason(Code.TYPE_MISMATCH, M, ""))
        sev = M if (disguises or outer_disguised) else S
        if worst is None or sev.rank > worst[0].rank:
            worst = (sev, m, what + (_disguised_as(mname) if disguises else ""))
    if embedded is not None:
        reasons.append(Reason(Code.EMBEDDED_EXECUTABLE, M,
                              f"'{shown}' has {describe_type(embedded.type)} "
                              f"('{printable(embedded.name)}') hidden inside it.",
                              f"member {printable(embedded.path)!r} "
                              f"({embedded.type.kind if embedded.type else '?'})"))
    if worst is not None:
        sev, m, what = worst
        more = f" and {count - 1} more" if count > 1 else ""
        reasons.append(Reason(Code.EXEC_IN_CONTAINER, sev,
                              f"'{shown}' contains '{printable(m.name)}'{more}: {what}.",
                              f"member {printable(m.path)!r} depth {m.depth} in {m.container}"))
    if facts.bomb:
        reasons.append(Reason(Code.ARCHIVE_BOMB, S,
                              f"'{shown}' looks built to overwhelm scanners "
                              f"(a decompression bomb), so it was not fully checked.",
                              facts.bomb))
    if facts.encrypted:
        reasons.append(Reason(Code.ENCRYPTED_CONTAINER, C,
                              f"'{shown}' is password-protected, so the contents of some "
                              f"parts could not be checked.", "encrypted members"))
    if facts.malformed:
        reasons.append(Reason(Code.MALFORMED, S,
                              f"'{shown}' is damaged or unusual, so it could not be fully "
                              f"checked.", "; ".join(facts.malformed)[:500]))
    return reasons


def judge(s: Sample) -> tuple[Level, tuple[Reason, ...]]:
    """The verdict level and its reasons, worst first. Pure."""
    shown = printable(s.name.name)
    reasons: list[Reason] = []
    if s.skipped:
        reasons.append(Reason(Code.SYMLINK_SKIPPED if s.skip is Skip.LINK else Code.NOT_REGULAR,
                              C, f"'{shown}' was skipped: {s.skipped}.", s.skipped))
        return C, tuple(reasons)
    reasons += _file_reasons(s, shown)
    reasons += _member_reasons(s, shown)
    for hit in s.rule_hits:
        reasons.append(Reason(Code.YARA_MATCH, hit.severity,
                              f"'{shown}' matches the detection rule '{hit.rule}'"
                              + (f": {hit.description}" if hit.description else "."),
                              f"rule {hit.namespace}:{hit.rule}"))
    for mh in s.member_hits:
        reasons.append(Reason(Code.YARA_MATCH, mh.hit.severity,
                              f"'{shown}' contains '{printable(mh.member)}', which matches the "
                              f"detection rule '{mh.hit.rule}'"
                              + (f": {mh.hit.description}" if mh.hit.description else "."),
                              f"rule {mh.hit.namespace}:{mh.hit.rule} on member"))
    for why in s.malformed:
        reasons.append(Reason(Code.MALFORMED, S,
                              f"'{shown}' is damaged or unusual, so it could not be fully "
                              f"checked.", why[:500]))
    if s.too_large:
        reasons.append(Reason(Code.TOO_LARGE, C,
                              f"'{shown}' is too large to check in full; only its type and "
                              f"fingerprint were checked.", f"{s.size} bytes"))
    for why in s.limits_exceeded:
        reasons.append(Reason(Code.LIMIT_EXCEEDED, S,
                              f"'{shown}' took too long to check, so it was not fully "
                              f"checked.", why))
    if s.error:
        reasons.append(Reason(Code.SCAN_FAILED, S,
                              f"'{shown}' could not be checked: {s.error}.", s.error))
    reasons = _dedupe(reasons)
    level = max((r.severity for r in reasons), default=C)
    reasons.sort(key=lambda r: -r.severity.rank)
    return level, tuple(reasons)


def _dedupe(reasons: list[Reason]) -> list[Reason]:
    seen: set[tuple[str, str]] = set()
    out = []
    for r in reasons:
        key = (r.code, r.message)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


# Under the meeting policy, anything in these codes is held back too: programs, scripts,
# shortcuts, disk images, and archives holding one.
_STRICT_CODES = frozenset({Code.EXECUTABLE, Code.EXEC_IN_CONTAINER, Code.LNK_COMMAND,
                           Code.EMBEDDED_EXECUTABLE})


def decide(verdict: Verdict, mode: Mode | str, meeting: bool = False,
           quarantine_suspicious: bool = False) -> Decision:
    """What to do with a scanned file. Pure; the mode is applied last."""
    mode = Mode(mode)
    if verdict.skipped or (verdict.error and verdict.level is not Level.MALICIOUS):
        intended, because = Action.ALLOW, "not scanned: " + (verdict.error or "skipped")
    elif verdict.level is Level.MALICIOUS:
        intended, because = Action.QUARANTINE, "malicious"
    elif meeting and (set(verdict.codes) & {c.value for c in _STRICT_CODES}
                      or verdict.type.family is Family.DISK_IMAGE):
        intended, because = Action.QUARANTINE, "meeting: strict policy for files that run"
    elif quarantine_suspicious and verdict.level is Level.SUSPICIOUS:
        intended, because = Action.QUARANTINE, "suspicious, quarantine_suspicious is on"
    else:
        intended, because = Action.ALLOW, verdict.level.value
    action = intended if mode is Mode.ENFORCE else Action.ALLOW
    return Decision(action=action, intended=intended, verdict=verdict,
                    because=f"{because}, {mode} mode", mode=mode, meeting=meeting)
