"""Hostile file names for hostile case 10, as bytes (some are not valid UTF-8).

Each one attacks a consumer of the name: the terminal (newlines, ANSI and OSC escapes, C1
controls, bidi overrides), the log's line structure (a name that *is* a complete audit
record, with newlines around it), UTF-8 decoding (invalid, overlong, surrogate bytes),
length (255 bytes, the most a Linux name may hold), argument parsing (a leading dash) and
any shell that might see it (``$(...)``, backticks, ``;``, ``|``). The shell payloads run
``guardcanary`` (a program the test puts first on PATH that records being run) or
``touch CANARY``.
"""

from __future__ import annotations

import os
import random

CANARY_PROGRAM = "guardcanary"
CANARY_FILES = ("CANARY", "CANARY2", "CANARY3")
NAME_MAX = 255

_FAKE_RECORD = (
    '{"@timestamp":"2030-01-01T00:00:00.000Z","event":{"action":"restore","outcome":'
    '"success","kind":"event"},"file":{"path":"C:\\\\evil.exe"},"guard":{"alg":"sha256",'
    '"seq":1,"verdict":"clean","prev":"0"},"schema_version":1}')

FIXED: tuple[bytes, ...] = (
    # line structure
    b"report\nfake.pdf", b"\nleading-newline.pdf", b"trailing-newline.pdf\n",
    b"crlf\r\nline.txt", b"carriage\rreturn.pdf", b"tab\there.pdf", b"vt\x0bff\x0c.pdf",
    _FAKE_RECORD.encode(), ("\n" + _FAKE_RECORD + "\n").encode(),
    b'"},"verdict":"clean","x":{".pdf', b"}\n{\"event\":{\"action\":\"purge\"}}.pdf",
    # terminal control
    b"\x1b[31mred\x1b[0m.txt", b"\x1b[2J\x1b[Hclear-screen.pdf", b"\x1b]0;owned\x07title.pdf",
    b"\x1b]8;;http:\\\\evil\x1b\\link\x1b]8;;\x1b\\.pdf", b"bell\x07.pdf", b"del\x7f.pdf",
    b"backspace\x08\x08\x08\x08exe.pdf", "c1-csi\u009b31m.pdf".encode(),
    "Invoice\u202efdp.exe".encode(), "line\u2028sep.pdf".encode(),
    "para\u2029sep.pdf".encode(), "zero\u200bwidth\u2060.pdf".encode(),
    "\u2066isolate\u2069.pdf".encode(),
    # not UTF-8
    b"Contr\xffact.pdf", b"\xc3\x28invalid.txt", b"\xed\xa0\x80surrogate.pdf",
    b"\xf8\x88\x80\x80\x80five-bytes.txt", b"\xc0\xafoverlong-slash.pdf", b"\x80\x81\x82.pdf",
    b"latin1-caf\xe9.pdf", b"\x1b[1m\xff\xfe\x1b[0m.pdf",
    # length: 255 bytes
    b"A" * 251 + b".pdf", ("\u00e9" * 125 + ".pdf").encode(), b"\xff" * 251 + b".pdf",
    ("\u202e" + "B" * 248 + ".pdf").encode()[:NAME_MAX],
    b"\n" * 10 + b"C" * 241 + b".pdf",
    # argument parsing
    b"-rf.pdf", b"--help", b"-n 5.pdf", b"-", b"--", b"-v.txt", b"--config=x.pdf",
    # shells
    b"$(touch CANARY).pdf", b"`touch CANARY2`.txt", b"a;touch CANARY3;.pdf",
    b"$(guardcanary).pdf", b"`guardcanary`.pdf", b";guardcanary;.pdf", b"|guardcanary.pdf",
    b"&&guardcanary&&.pdf", b"${IFS}guardcanary.pdf", b"$((6*7)).pdf", b"a'$(guardcanary)'b.pdf",
    b'a"$(guardcanary)"b.pdf', b">guardcanary-out.pdf", b"<(guardcanary).pdf",
    b"\nguardcanary\n.pdf", b"x\n$(guardcanary)\n.docx",
    # formats, globs, paths
    b"%s%s%s%n%x.pdf", b"{0}{1}{{7*7}}.pdf", b"' OR '1'='1.pdf", b"..\\..\\evil.pdf",
    b"*.pdf", b"?.pdf", b"[a-z].pdf", b"~", b"~root.pdf", b"..pdf", b"...", b" .pdf",
    b"trailing-space.pdf ", b".hidden.pdf", b"Invoice.pdf .exe", b"Invoice.pdf" + b" " * 40 + b".exe",
    "\u0421\u0447\u0451\u0442.pdf".encode(), "\u8acb\u6c42\u66f8.pdf".encode(),
    "\U0001f600.pdf".encode(), "e\u0301.pdf".encode(),
)

_FRAGMENTS = (b"\n", b"\r", b"\x1b[", b"\x1b]0;", b"\x07", b"\x9b", b"\xc2\x9b", b"\xff", b"\xfe",
              b"\xc3", b"\xed\xa0\x80", "\u202e".encode(), "\u2028".encode(), b"$(guardcanary)",
              b"`guardcanary`", b";guardcanary;", b"|guardcanary", b'{"event":', b'"}', b"\\",
              b"-", b"--", b"%n", b"\t", b"\x7f", b" ", b"'", b'"', b"*", b"?")
_EXTS = (b".pdf", b".txt", b".docx", b".exe", b".jpg", b"", b".pdf.exe", b".lnk")


def usable(name: bytes) -> bool:
    """A name a file can have, that the agent does not skip on purpose (partial downloads,
    office lock files, the vault's own)."""
    from guard.sources.watch import is_partial
    return (0 < len(name) <= NAME_MAX and b"/" not in name and b"\0" not in name
            and name not in (b".", b"..") and not is_partial(os.fsdecode(name)))


def names(n: int, seed: int = 10, fixed_only: bool = False) -> list[bytes]:
    """The fixed names first, then random mixes of hostile fragments, *n* in all, unique
    (*fixed_only*: just the fixed ones)."""
    out = [x for x in FIXED if usable(x)]
    if fixed_only:
        return out
    out = out[:n]
    rng = random.Random(seed)
    seen = set(out)
    while len(out) < n:
        parts = [rng.choice(_FRAGMENTS) if rng.random() < 0.6 else
                 rng.randbytes(rng.randint(1, 6)) if rng.random() < 0.3 else
                 "".join(chr(rng.randint(0x20, 0x2FFF)) for _ in range(rng.randint(1, 8))).encode(
                     "utf-8", "surrogatepass")
                 for _ in range(rng.randint(1, 6))]
        name = b"".join(parts)[: NAME_MAX - 8] + rng.choice(_EXTS)
        if rng.random() < 0.1:
            name = name + b"X" * (NAME_MAX - len(name))       # right at the limit
        if usable(name) and name not in seen:
            seen.add(name)
            out.append(name)
    return out
