"""Active content in PDFs, the way pdfid counts it: name keywords in the raw bytes.

PDF names may hex-escape characters (/J#61vaScript), so escaped names are normalised
first. Objects inside compressed object streams are not seen, which is pdfid's limit too;
attachments are opened separately by the container walker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = re.compile(rb"/(?:[A-Za-z0-9]|#[0-9A-Fa-f]{2}){2,40}")
ACTIVE_KEYS = {b"/JavaScript": "JavaScript", b"/JS": "JavaScript", b"/Launch": "a Launch action",
               b"/EmbeddedFile": "an attached file", b"/RichMedia": "rich media (Flash)",
               b"/XFA": "an XFA form", b"/OpenAction": "an open action", b"/AA": "automatic actions"}
# Keys that make a PDF *active* on their own. OpenAction/AA only trigger something else;
# attachments are judged by what they hold (e-invoices carry XML attachments).
_EOF_WINDOW = 2048   # writers and mail gateways may leave a little junk after %%EOF
RUNS_CODE = ("JavaScript", "a Launch action", "rich media (Flash)")


@dataclass(frozen=True)
class PdfFacts:
    keywords: dict[str, int]
    complete: bool = True     # has startxref and %%EOF near the end (not truncated)

    @property
    def active(self) -> tuple[str, ...]:
        found = []
        for key, what in ACTIVE_KEYS.items():
            if self.keywords.get(key.decode(), 0) and what in RUNS_CODE and what not in found:
                found.append(what)
        return tuple(found)


def _unescape(name: bytes) -> bytes:
    if b"#" not in name:
        return name
    return re.sub(rb"#([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), name)


def inspect_pdf(data: bytes) -> PdfFacts:
    counts: dict[str, int] = {}
    for m in _NAME.finditer(data):
        key = _unescape(m.group())
        if key in ACTIVE_KEYS:
            counts[key.decode()] = counts.get(key.decode(), 0) + 1
    complete = b"%%EOF" in data[-_EOF_WINDOW:] and b"startxref" in data[-_EOF_WINDOW - 64:]
    return PdfFacts(counts, complete)
