"""Facts about a file *name*: what its extension claims, and the tricks that hide it.

Gathers facts only; ``guard.policy.engine`` decides what they mean. Every table here is
data: extend it, don't special-case around it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from ..verdict import Family

_EXT_FAMILIES: dict[Family, str] = {
    Family.EXECUTABLE: """exe dll scr com pif cpl msi msp msix msixbundle appx appxbundle sys drv ocx
        efi so dylib pyd elf class jar xll wll application appref-ms gadget msc deb rpm pkg
        mpkg apk appimage run bundle app""",
    Family.SCRIPT: """js jse vbs vbe wsf wsh wsc sct hta bat cmd ps1 psm1 psd1 ps1xml psc1 sh bash zsh
        ksh csh fish command tool py pyw pyc pl rb php applescript scpt scptd workflow reg
        chm inf iqy slk mht mhtml""",
    Family.SHORTCUT: """lnk url website desktop webloc inetloc scf library-ms searchconnector-ms
        settingcontent-ms search-ms""",
    Family.DOCUMENT: """pdf doc docx docm dot dotx dotm xls xlsx xlsm xlsb xlt xltx xltm ppt pptx pptm
        pps ppsx pot potx odt ods odp odg rtf txt text csv tsv md markdown rst tex log json xml
        yaml yml ini cfg conf html htm xhtml eml msg epub mobi xps oxps pages numbers key
        vsd vsdx pub one ics vcf""",
    Family.IMAGE: """jpg jpeg jpe jfif png gif bmp tif tiff webp heic heif ico icns svg psd ai eps raw
        cr2 nef dng avif""",
    Family.AUDIO: "mp3 wav flac ogg oga m4a aac wma opus aiff aif amr mid midi",
    Family.VIDEO: "mp4 m4v mov avi mkv webm wmv flv mpg mpeg 3gp ts",
    Family.ARCHIVE: """zip zipx 7z rar tar gz tgz bz2 tbz tbz2 xz txz zst lz lzma cab arj ace
        z lzh sit sitx""",
    Family.DISK_IMAGE: "iso img dmg vhd vhdx vmdk udf sparseimage sparsebundle",
}
EXTENSION_FAMILY: dict[str, Family] = {
    ext: fam for fam, exts in _EXT_FAMILIES.items() for ext in exts.split()
}
# Extensions whose content is text a person reads: a script body under them is not a
# disguise (a shell snippet saved as notes.txt does not run when opened).
TEXT_EXTENSIONS = frozenset("""txt text csv tsv md markdown rst tex log json xml yaml yml ini cfg
    conf html htm xhtml eml ics vcf svg""".split())
# Runnable extensions that Windows Explorer or macOS Finder hide from view by default, so a
# document word at the end of the stem is what the person reads as the type.
HIDDEN_EXTENSIONS = frozenset("""lnk url website desktop webloc inetloc scf library-ms
    searchconnector-ms settingcontent-ms search-ms pif js jse vbs vbe wsf wsh hta bat cmd
    scr exe com cpl msi applescript scpt command tool app""".split())
# Document words that, at the end of a shortcut's or script's stem, make it read as a
# document: "Contract_PDF.lnk", "Invoice (docx).js".
LURE_TOKENS = frozenset("""pdf doc docx xls xlsx ppt pptx rtf odt txt csv jpg jpeg png gif mp4 mov
    mp3 zip rar 7z iso""".split())

# Explicit directional formatting: embeddings, overrides and isolates. Left/right marks
# (U+200E, U+200F, U+061C) are left out on purpose: they occur in ordinary Arabic and
# Hebrew names and cannot reorder letters.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Characters that render as (nearly) nothing and serve only to push text out of view.
INVISIBLE_FILLERS = frozenset("\u2800\u3164\u115f\u1160\uffa0\u200b\u2060\ufeff\u180e")
PAD_RUN = 5            # fill characters in a row right before the extension
PAD_RUN_ANYWHERE = 16  # fill characters in a row anywhere in the name
_FILL_CLASS = "[\\s" + "".join(sorted(INVISIBLE_FILLERS)) + "]"
_PAD_BEFORE_EXT = re.compile(f"(?:{_FILL_CLASS}{{{PAD_RUN},}}|\\.{{{PAD_RUN},}})\\.?[^.]*$")
_PAD_ANYWHERE = re.compile(f"{_FILL_CLASS}{{{PAD_RUN_ANYWHERE},}}|\\.{{{PAD_RUN_ANYWHERE},}}")
_LURE_SPLIT = re.compile(r"[\s_\-\(\)\[\]{}.,]+")


@dataclass(frozen=True)
class NameFacts:
    name: str                      # the display form (undecodable bytes escaped)
    extension: str                 # final extension, lower case, no dot ("" if none)
    claimed: Family                # what the final extension claims
    inner_extension: str = ""      # the extension before it, when it claims another family
    inner_claimed: Family | None = None
    bidi_controls: tuple[str, ...] = ()   # code points found, as "U+202E"
    padded: bool = False
    lure_token: str = ""           # document word ending the stem of a runnable name
    hidden_extension: bool = False # Explorer/Finder hide this extension by default

    @property
    def displayed(self) -> str:
        """Roughly what a person sees: bidi controls applied is beyond us, so strip them."""
        return "".join(c for c in self.name if c not in BIDI_CONTROLS)


def _clean(segment: str) -> str:
    return "".join(c for c in segment if c not in BIDI_CONTROLS and c not in INVISIBLE_FILLERS
                   ).strip().lower()


def split_extension(name: str) -> tuple[str, str]:
    """('Contract.pdf', 'exe') for 'Contract.pdf.exe'; ('README', '') for 'README'."""
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem.strip(". ") or not ext or len(ext) > 24:
        return name, ""
    return stem, _clean(ext)


def extension_family(ext: str) -> Family:
    return EXTENSION_FAMILY.get(ext.lower(), Family.OTHER)


def analyze_name(name: str) -> NameFacts:
    """Facts about a base name (no folder part). Never raises."""
    stem, ext = split_extension(name)
    claimed = extension_family(ext)
    inner_ext, inner_claimed = "", None
    if ext:
        _, inner = split_extension(stem)
        fam = extension_family(inner)
        if inner and fam is not Family.OTHER and fam is not claimed:
            inner_ext, inner_claimed = inner, fam
    bidi = tuple(sorted({f"U+{ord(c):04X}" for c in name if c in BIDI_CONTROLS}))
    padded = bool(_PAD_BEFORE_EXT.search(name) or _PAD_ANYWHERE.search(name))
    lure = ""
    if claimed.runs and ext:
        words = [w for w in _LURE_SPLIT.split(_clean(stem)) if w]
        if len(words) >= 2 and words[-1] in LURE_TOKENS:
            lure = words[-1]
    return NameFacts(
        name=name, extension=ext, claimed=claimed, inner_extension=inner_ext,
        inner_claimed=inner_claimed, bidi_controls=bidi, padded=padded, lure_token=lure,
        hidden_extension=ext in HIDDEN_EXTENSIONS,
    )


def is_text_claim(ext: str) -> bool:
    return ext.lower() in TEXT_EXTENSIONS


def printable(name: str) -> str:
    """A name safe to print on one terminal line: controls and bidi escaped, never raises.

    Undecodable bytes (surrogate-escaped by os.fsdecode) appear as \\xNN.
    """
    out = []
    for ch in name:
        cp = ord(ch)
        if 0xDC80 <= cp <= 0xDCFF:
            out.append(f"\\x{cp - 0xDC00:02x}")
        elif ch in BIDI_CONTROLS or ch in INVISIBLE_FILLERS or unicodedata.category(ch) in (
                "Cc", "Cf", "Zl", "Zp", "Cs"):
            out.append(f"\\u{cp:04x}" if cp <= 0xFFFF else f"\\U{cp:08x}")
        else:
            out.append(ch)
    return "".join(out)


def valid_text(text: str) -> str:
    """*text* as valid Unicode: undecodable name bytes (surrogate-escaped by
    os.fsdecode) become U+FFFD. For consumers that need real UTF-8 (YARA, JSON)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
