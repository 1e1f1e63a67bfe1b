"""What a file really is, from its content: libmagic on a bounded head, plus exact checks.

libmagic answers for everything (mime and description); the exact checks below settle the
families that matter most (PE, ELF, Mach-O, shortcuts, scripts, containers), because
libmagic's text heuristics guess (it calls some Markdown "Python script") and because a
disguise check must not depend on a guess.

Gathers facts only. MUST NOT read the file: it works on bytes the caller read, so a
scan reads each file once.
"""

from __future__ import annotations

import re
import struct
import threading

import magic

from ..verdict import Family, FileType
from .names import is_text_claim

MAGIC_HEAD_BYTES = 256 * 1024   # what libmagic sees; ISO needs >= 32 KiB, DMG uses the tail

_LNK_HEADER = bytes.fromhex("4c0000000114020000000000c000000000000046")
_MACHO_THIN = {b"\xfe\xed\xfa\xce", b"\xce\xfa\xed\xfe", b"\xfe\xed\xfa\xcf", b"\xcf\xfa\xed\xfe"}
_FAT_MAGIC = {b"\xca\xfe\xba\xbe", b"\xca\xfe\xba\xbf"}
_OLE = bytes.fromhex("d0cf11e0a1b11ae1")
_SHEBANG = re.compile(rb"^\xef?\xbb?\xbf?#![ \t]*(\S+)(?:[ \t]+(\S+))?")
_INTERPRETERS = {
    "sh": "sh", "bash": "sh", "dash": "sh", "zsh": "sh", "ksh": "sh", "csh": "sh", "tcsh": "sh",
    "fish": "sh", "python": "python", "perl": "perl", "ruby": "ruby", "node": "js",
    "nodejs": "js", "osascript": "applescript", "pwsh": "ps1", "powershell": "ps1", "php": "php",
    "deno": "js", "bun": "js", "lua": "lua", "tclsh": "tcl", "wish": "tcl",
}
# Strong textual markers of Windows/macOS script hosts, searched in lower-cased text.
# A hit turns "text" into "script". One pattern, one pass.
_SCRIPT_MARKERS = re.compile(
    rb"(?P<hta><\s*hta:application)"
    rb"|(?P<vbs>createobject\s*\(\s*\"(?:wscript\.shell|shell\.application|"
    rb"scripting\.filesystemobject|msxml2\.|adodb\.stream)|wscript\.(?:shell|createobject|"
    rb"sleep|quit|arguments))"
    rb"|(?P<js>new\s+activexobject\s*\()"
    rb"|(?P<ps1>\binvoke-expression\b|\biex\s*\(|\bnew-object\s+(?:system\.)?net\.webclient"
    rb"|\binvoke-webrequest\b|\bstart-process\b|\[system\.convert\]::frombase64string"
    rb"|-encodedcommand\b)"
    rb"|(?P<applescript>\bdo shell script\s+\")"
    rb"|(?P<bat>^(?:\xef\xbb\xbf)?\s*@echo\s+off\b)")
_MARKER_WINDOW = 64 * 1024


# Every marker contains one of these; plain substring tests rule most text out cheaply.
_MARKER_KEYS = (b"hta:application", b"createobject", b"wscript.", b"activexobject",
                b"invoke-", b"iex", b"new-object", b"start-process", b"frombase64string",
                b"-encodedcommand", b"do shell script", b"@echo")


def _script_marker(head: bytes) -> str:
    low = head[:_MARKER_WINDOW].lower()
    if not any(key in low for key in _MARKER_KEYS):
        return ""
    m = _SCRIPT_MARKERS.search(low)
    return m.lastgroup or "" if m else ""


_MIME_SCRIPT = {
    "application/javascript": "js", "text/javascript": "js", "application/x-javascript": "js",
    "text/x-msdos-batch": "bat", "text/x-shellscript": "sh", "application/x-shellscript": "sh",
    "text/x-python": "python", "text/x-script.python": "python", "text/x-perl": "perl",
    "text/x-ruby": "ruby", "text/x-php": "php", "application/x-powershell": "ps1",
    "text/x-tcl": "tcl", "text/x-lua": "lua", "text/x-awk": "awk",
}
_MIME_FAMILY_PREFIX = (("image/", Family.IMAGE), ("audio/", Family.AUDIO),
                       ("video/", Family.VIDEO), ("text/", Family.DOCUMENT),
                       ("message/", Family.DOCUMENT), ("font/", Family.OTHER))
_MIME_FAMILY = {
    **{m: Family.DOCUMENT for m in (
        "application/pdf", "application/msword", "application/rtf", "application/epub+zip",
        "application/json", "application/xml", "application/vnd.ms-outlook",
        "application/vnd.ms-excel", "application/vnd.ms-powerpoint", "application/csv",
        "application/vnd.ms-office", "application/x-ole-storage", "application/CDFV2")},
    **{m: Family.ARCHIVE for m in (
        "application/zip", "application/x-7z-compressed", "application/x-rar",
        "application/vnd.rar", "application/gzip", "application/x-gzip", "application/x-bzip2",
        "application/x-xz", "application/x-tar", "application/vnd.ms-cab-compressed",
        "application/zstd", "application/x-lzma", "application/x-lzip", "application/x-arj",
        "application/x-compress", "application/x-lha", "application/x-stuffit")},
    **{m: Family.DISK_IMAGE for m in (
        "application/x-iso9660-image", "application/x-apple-diskimage",
        "application/x-virtualbox-vhd", "application/x-vhd", "application/x-udf-image")},
    **{m: Family.EXECUTABLE for m in (
        "application/x-executable", "application/x-sharedlib", "application/x-pie-executable",
        "application/x-mach-binary", "application/x-dosexec", "application/x-msi",
        "application/vnd.microsoft.portable-executable", "application/java-archive",
        "application/x-java-applet", "application/x-ms-installer", "application/x-msdownload",
        "application/vnd.debian.binary-package", "application/x-rpm",
        "application/x-xar", "application/vnd.android.package-archive",
        "application/x-object", "application/x-coff")},
    "application/x-ms-shortcut": Family.SHORTCUT,
}
# Zip-based formats whose libmagic description names a document.
_DOC_DESCRIPTIONS = ("microsoft word", "microsoft excel", "microsoft powerpoint",
                     "microsoft ooxml", "opendocument", "epub", "composite document file")

_lock = threading.Lock()
_shared: magic.Magic | None = None


def _handle() -> magic.Magic:
    """One libmagic handle for the whole process, its flags set before each call.

    A handle maps the compiled magic database (up to 8 MB of RSS as it is used); one per
    thread, or one per flag set, cost tens of MB in the agent. Calls are serialised by
    ``_lock``.
    """
    global _shared
    if _shared is None:
        with _lock:
            if _shared is None:
                _shared = magic.Magic()
    return _shared


def _call(buf: bytes, default: str, mime: bool, text_tests: bool) -> str:
    """One libmagic call: the MIME type (*mime*) or the description. Without
    *text_tests*, libmagic skips its text classification, two thirds of its time and
    nothing it says about binary content changes."""
    flags = (magic.MAGIC_MIME_TYPE if mime else magic.MAGIC_NONE)
    if not text_tests:
        flags |= magic.MAGIC_NO_CHECK_TEXT
    handle = _handle()
    try:
        with _lock:
            magic.magic_setflags(handle.cookie, flags)
            return handle.from_buffer(buf) or default
    except Exception:  # libmagic reports odd input as generic errors
        return default


def libmagic(head: bytes, extension: str = "") -> tuple[str, str]:
    """(mime, description) from libmagic; never raises.

    Text under a name that claims text (notes.txt, data.json) skips libmagic's costly
    text classification: a script body there is no disguise, so the answer changes
    nothing; it is described from its encoding instead.
    """
    buf = head[:MAGIC_HEAD_BYTES]
    mime = _call(buf, "application/octet-stream", mime=True, text_tests=False)
    if mime == "application/octet-stream" and _looks_text(buf):
        if is_text_claim(extension):
            return _TEXT_MIME.get(extension, "text/plain"), _text_description(buf)
        mime = _call(buf, "application/octet-stream", mime=True, text_tests=True)
        return mime, " ".join(_call(buf, "data", mime=False, text_tests=True).split())
    return mime, " ".join(_call(buf, "data", mime=False, text_tests=False).split())


_TEXT_MIME = {"csv": "text/csv", "tsv": "text/tab-separated-values", "html": "text/html",
              "htm": "text/html", "xml": "text/xml", "json": "application/json",
              "md": "text/markdown", "markdown": "text/markdown", "svg": "image/svg+xml",
              "eml": "message/rfc822", "ics": "text/calendar", "vcf": "text/vcard"}


def _text_description(buf: bytes) -> str:
    if buf.isascii():
        return "ASCII text"
    try:
        buf.decode("utf-8")
        return "UTF-8 text"
    except UnicodeDecodeError as exc:
        if exc.start >= len(buf) - 3:       # a character cut by the head's end
            return "UTF-8 text"
        return "text (8-bit)"


def pe_header_offset(data: bytes) -> int | None:
    """Offset of a valid 'PE\\0\\0' signature at e_lfanew, else None."""
    if len(data) < 0x40 or data[:2] != b"MZ":
        return None
    (lfanew,) = struct.unpack_from("<I", data, 0x3C)
    if lfanew < 0x40 - 4 or lfanew + 4 > len(data):
        return None
    return lfanew if data[lfanew:lfanew + 4] == b"PE\0\0" else None


def _fat_arch_count(data: bytes) -> int | None:
    """Number of architectures if this CAFEBABE file is a Mach-O fat binary, else None.

    The same magic opens Java class files; as in file(1), a small count means Mach-O
    (a class file puts its version there: 45 or more).
    """
    if len(data) < 8 or data[:4] not in _FAT_MAGIC:
        return None
    (count,) = struct.unpack_from(">I", data, 4)
    return count if 0 < count < 20 else None


def _script_by_shebang(head: bytes) -> str:
    m = _SHEBANG.match(head[:256])
    if not m:
        return ""
    prog = m.group(1).rsplit(b"/", 1)[-1].decode("latin-1").lower()
    if prog == "env" and m.group(2):
        prog = m.group(2).rsplit(b"/", 1)[-1].decode("latin-1").lower()
    prog = re.sub(r"[\d.]+$", "", prog)
    return _INTERPRETERS.get(prog, "shebang")


def _text_shortcut(head: bytes) -> str:
    text = head[:2048].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"[internetshortcut]") or text.startswith(
            b"[{000214a0-0000-0000-c000-000000000046}]"):
        return "url"
    if text.startswith(b"[desktop entry]") and b"\nexec=" in text.replace(b" =", b"="):
        return "desktop"
    if text.startswith(b"[shell]") and b"command=" in text:
        return "scf"
    if b"<plist" in text and b"<key>url</key>" in text and text.count(b"<key>") <= 3:
        return "webloc"
    return ""


_CONTROL = bytes(b for b in range(32) if b not in (9, 10, 11, 12, 13, 27))


def _looks_text(head: bytes) -> bool:
    """No NUL and under 1 % other control bytes in the first 8 KiB."""
    sample = head[:8192]
    if not sample or b"\0" in sample:
        return False
    controls = len(sample) - len(sample.translate(None, _CONTROL))
    return controls <= len(sample) // 100


def identify(head: bytes, extension: str = "", tail: bytes = b"", use_magic: bool = True
             ) -> FileType:
    """The true type of content whose first bytes are *head*.

    *extension* (the name's, lower case, no dot) only settles libmagic's weak text
    guesses; *tail* (the last 512 bytes, when the head is not the whole file) finds
    trailer-marked formats such as DMG. *use_magic* False skips libmagic (parts of a
    document, where only the exact checks matter). Never raises.
    """
    mime, desc = libmagic(head, extension) if use_magic else ("", "")
    kind, family = exact_kind(head, tail or head[-512:], mime, desc, extension)
    guessed = family is Family.SCRIPT and _MIME_SCRIPT.get(mime) == kind and not (
        _script_by_shebang(head) or _script_marker(head))
    if family is None:
        family = _family_from_mime(mime, desc)
    return FileType(mime=mime, description=desc, family=family, kind=kind, guessed=guessed)


def exact_kind(head: bytes, tail: bytes, mime: str = "", desc: str = "",
               extension: str = "") -> tuple[str, Family | None]:
    """(kind, family) from byte-exact checks; family None when only libmagic can tell."""
    if pe_header_offset(head) is not None:
        return "pe", Family.EXECUTABLE
    if head[:2] == b"MZ" and len(head) >= 0x40 and mime in (
            "application/x-dosexec", "application/vnd.microsoft.portable-executable"):
        return "dos", Family.EXECUTABLE
    if head[:4] == b"\x7fELF":
        return "elf", Family.EXECUTABLE
    if head[:4] in _MACHO_THIN:
        return "macho", Family.EXECUTABLE
    if _fat_arch_count(head) is not None:
        return "macho-fat", Family.EXECUTABLE
    if head[:4] == b"\xca\xfe\xba\xbe":
        return "java-class", Family.EXECUTABLE
    if head[:20] == _LNK_HEADER:
        return "lnk", Family.SHORTCUT
    if head[:7] == b"FasdUAS":
        return "applescript", Family.SCRIPT
    if head[:8] == _OLE:
        if "msi installer" in desc.lower() or mime == "application/x-msi":
            return "msi", Family.EXECUTABLE
        return "ole", Family.DOCUMENT
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        low = desc.lower()
        if mime == "application/java-archive" or "java archive" in low:
            return "jar", Family.EXECUTABLE
        if "opendocument" in low:
            return "odf", Family.DOCUMENT
        if "epub" in low:
            return "epub", Family.DOCUMENT
        if any(d in low for d in _DOC_DESCRIPTIONS):
            return "ooxml", Family.DOCUMENT
        return "zip", None if mime != "application/zip" else Family.ARCHIVE
    if head[:6] == b"7z\xbc\xaf\x27\x1c":
        return "7z", Family.ARCHIVE
    if head[:7] == b"Rar!\x1a\x07\x00" or head[:8] == b"Rar!\x1a\x07\x01\x00":
        return "rar", Family.ARCHIVE
    if head[:4] == b"MSCF":
        return "cab", Family.ARCHIVE
    if head[:2] == b"\x1f\x8b":
        return "gzip", Family.ARCHIVE
    if head[:3] == b"BZh" and head[3:4].isdigit():
        return "bzip2", Family.ARCHIVE
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz", Family.ARCHIVE
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar", Family.ARCHIVE
    if len(head) >= 0x8006 and head[0x8001:0x8006] == b"CD001":
        return "iso", Family.DISK_IMAGE
    if len(head) >= 0x8006 and head[0x8001:0x8006] in (b"BEA01", b"NSR02", b"NSR03"):
        return "udf", Family.DISK_IMAGE
    if head[:8] == b"vhdxfile" or head[:8] == b"conectix" or tail[-512:-504] == b"conectix":
        return "vhd", Family.DISK_IMAGE
    if len(tail) >= 512 and tail[-512:-508] == b"koly":
        return "dmg", Family.DISK_IMAGE
    if b"%PDF-" in head[:1024]:
        return "pdf", Family.DOCUMENT
    if head[:5] == b"{\\rtf":
        return "rtf", Family.DOCUMENT
    shebang = _script_by_shebang(head)
    if shebang:
        return shebang, Family.SCRIPT
    if _looks_text(head):
        shortcut = _text_shortcut(head)
        if shortcut:
            return shortcut, Family.SHORTCUT
        if not is_text_claim(extension):
            marker = _script_marker(head)
            if marker:
                return marker, Family.SCRIPT
        weak = _MIME_SCRIPT.get(mime)
        if weak:
            # libmagic's guess from keywords; a text name keeps it a document.
            if is_text_claim(extension):
                return "text", Family.DOCUMENT
            return weak, Family.SCRIPT
        if mime.startswith("text/") or mime in ("application/json", "application/xml"):
            return "text", Family.DOCUMENT
    return "", None


def _family_from_mime(mime: str, desc: str) -> Family:
    fam = _MIME_FAMILY.get(mime)
    if fam is not None:
        return fam
    low = desc.lower()
    if any(d in low for d in _DOC_DESCRIPTIONS):
        return Family.DOCUMENT
    for prefix, fam in _MIME_FAMILY_PREFIX:
        if mime.startswith(prefix):
            return fam
    if mime.startswith("application/vnd.openxmlformats") or mime.startswith(
            "application/vnd.oasis.opendocument") or mime.startswith("application/vnd.ms-"):
        return Family.DOCUMENT
    return Family.OTHER


YARA_FILETYPE = {
    "pe": "EXE", "dos": "EXE", "elf": "ELF", "macho": "MACHO", "macho-fat": "MACHO",
    "java-class": "CLASS", "lnk": "LNK", "url": "URL", "desktop": "DESKTOP", "scf": "SCF",
    "webloc": "WEBLOC", "applescript": "APPLESCRIPT", "msi": "MSI", "ole": "OLE", "jar": "JAR",
    "ooxml": "OOXML", "odf": "ODF", "zip": "ZIP", "7z": "7Z", "rar": "RAR", "cab": "CAB",
    "gzip": "GZ", "bzip2": "BZ2", "xz": "XZ", "tar": "TAR", "iso": "ISO", "udf": "ISO",
    "vhd": "VHD", "dmg": "DMG", "pdf": "PDF", "rtf": "RTF", "text": "TEXT", "js": "JS",
    "vbs": "VBS", "ps1": "PS1", "hta": "HTA", "bat": "BAT", "sh": "SH", "python": "PY",
}


def yara_filetype(ftype: FileType) -> str:
    """The LOKI-style upper-case type name rules see in the ``filetype`` external."""
    return YARA_FILETYPE.get(ftype.kind, ftype.kind.upper())
