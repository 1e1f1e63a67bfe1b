"""Look inside archives, disk images and compound documents without extracting anything.

Everything is read into memory under a shared budget (depth, members, expanded bytes);
nothing is ever written to disk. Each reader yields ``(name, size, data, encrypted)`` for
the members it can list; the walker identifies each member from its first bytes and
descends into members that are containers themselves.

Gathers facts only: which members there are and what they are. Whether a member makes
the container suspicious is ``guard.policy.engine``'s call.
"""

from __future__ import annotations

import bz2
import io
import lzma
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..verdict import FileType
from .filetype import identify
from .names import split_extension

HEAD_BYTES = 64 * 1024
_BOMB_FLOOR = 16 << 20    # below this expanded size, no ratio is a bomb
# Containers whose parts are a document's own XML and media: only the exact checks run on
# their members (libmagic on every part of every .docx would cost more than it finds).
_DOC_PARTS = frozenset({"ooxml", "odf", "epub"})


@dataclass
class Limits:
    max_depth: int = 4                     # containers inside containers
    max_members: int = 10_000              # members listed, all levels together
    max_expanded_bytes: int = 256 << 20    # bytes decompressed, all levels together
    max_member_bytes: int = 64 << 20       # a nested container read whole up to this
    max_ratio: int = 100                   # expansion ratio that marks a bomb, past 16 MiB
    sample_bytes: int = 1 << 20            # bytes kept of a runnable member for YARA


@dataclass(frozen=True)
class Member:
    path: str                 # "outer.zip!inner.iso!Contract.pdf.lnk": container chain
    name: str                 # base name inside its container
    type: FileType | None     # None when unreadable (encrypted, or not decompressed)
    size: int
    depth: int                # 1 for a direct member
    container: str            # kind of the container that holds it: zip, iso, ole, pdf, ...
    encrypted: bool = False
    sample: bytes = field(default=b"", repr=False, compare=False)


@dataclass
class ContainerFacts:
    members: list[Member] = field(default_factory=list)
    bomb: str = ""             # why it looks like a decompression bomb, if it does
    malformed: list[str] = field(default_factory=list)
    encrypted: bool = False
    uninspected: str = ""      # a container kind we can only name, not open (dmg, vhd)
    expanded_bytes: int = 0
    truncated: bool = False    # a limit stopped the walk early


class _Stop(Exception):
    """A limit was reached: stop walking, keep what was found."""


ReadResult = tuple[str, int, "bytes | None", bool]  # name, size, data (maybe partial), encrypted


class _Walker:
    def __init__(self, limits: Limits, is_runnable: Callable[[FileType | None, str], bool]):
        self.limits = limits
        self.facts = ContainerFacts()
        self.is_runnable = is_runnable

    # --- budget ---------------------------------------------------------------------
    def take(self, nbytes: int) -> int:
        """Reserve up to *nbytes* of the expansion budget; returns what may be read."""
        left = self.limits.max_expanded_bytes - self.facts.expanded_bytes
        if left <= 0:
            self.facts.truncated = True
            self.flag_bomb(f"more than {self.limits.max_expanded_bytes >> 20} MiB expanded")
            raise _Stop
        return min(nbytes, left)

    def spend(self, nbytes: int) -> None:
        self.facts.expanded_bytes += nbytes

    def flag_bomb(self, why: str) -> None:
        if not self.facts.bomb:
            self.facts.bomb = why

    def want_bytes(self, kind: str, size: int) -> int:
        """How much of a member to read: whole when it is a container, else a head."""
        if kind in READERS:
            return min(size, self.limits.max_member_bytes)
        return min(size, HEAD_BYTES)

    # --- walking --------------------------------------------------------------------
    def walk(self, data: bytes, kind: str, prefix: str, depth: int) -> None:
        reader = READERS.get(kind)
        if reader is None:
            return
        if depth > self.limits.max_depth:
            self.facts.truncated = True
            self.flag_bomb(f"containers nested deeper than {self.limits.max_depth} levels")
            return
        try:
            for name, size, member_data, encrypted in reader(self, data):
                self.add(name, size, member_data, encrypted, kind, prefix, depth)
        except _Stop:
            raise
        except Exception as exc:  # each reader's own errors: the container is malformed
            self.facts.malformed.append(f"{prefix or kind}: {type(exc).__name__}: {exc}"[:300])

    def add(self, name: str, size: int, data: bytes | None, encrypted: bool, container: str,
            prefix: str, depth: int) -> None:
        if len(self.facts.members) >= self.limits.max_members:
            self.facts.truncated = True
            self.flag_bomb(f"more than {self.limits.max_members} members")
            raise _Stop
        base = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
        ftype = None
        if data is not None:
            ftype = identify(data[:HEAD_BYTES] if len(data) > HEAD_BYTES else data,
                             split_extension(base)[1], use_magic=container not in _DOC_PARTS)
        path = f"{prefix}!{name}" if prefix else name
        sample = b""
        if data is not None and self.is_runnable(ftype, base):
            sample = data[: self.limits.sample_bytes]
        self.facts.members.append(Member(path, base, ftype, size, depth + 1, container,
                                         encrypted, sample))
        if encrypted:
            self.facts.encrypted = True
        if ftype is not None and data is not None and ftype.kind in READERS:
            self.walk(data, ftype.kind, path, depth + 1)


def walk_container(data: bytes, kind: str, limits: Limits | None = None,
                   is_runnable: Callable[[FileType | None, str], bool] = lambda t, n: False
                   ) -> ContainerFacts:
    """Members of the container *data* of content kind *kind*, recursively. Never raises."""
    walker = _Walker(limits or Limits(), is_runnable)
    if kind in UNINSPECTED:
        walker.facts.uninspected = kind
        return walker.facts
    try:
        walker.walk(data, kind, "", 0)
    except _Stop:
        pass
    except (MemoryError, RecursionError) as exc:
        walker.facts.malformed.append(f"{kind}: {type(exc).__name__}")
    return walker.facts


# --- readers: each yields (name, size, data-or-None, encrypted) -----------------------

def zip_directory(data: bytes, stop_after: int) -> list[tuple[str, int, bool]] | None:
    """The zip's central directory, found the way zipfile finds it, up to *stop_after* + 1
    entries: (name, declared size, encrypted). None when there is no end record.

    zipfile builds an object for every entry before anything can be counted: a million
    entries (86 MB of stored empty files) cost it 4 s and a GB. This stops early.
    """
    try:
        end = zipfile._EndRecData(io.BytesIO(data))   # the end record, as zipfile reads it
        size_cd, offset_cd = end[zipfile._ECD_SIZE], end[zipfile._ECD_OFFSET]
        at = end[zipfile._ECD_LOCATION] - size_cd - offset_cd    # data prepended to the zip
        if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:
            at -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator
    except (AttributeError, TypeError, IndexError, OSError, struct.error, zipfile.BadZipFile):
        return None                  # no end record, or a zipfile without these internals
    pos = offset_cd + at
    stop = pos + size_cd
    out: list[tuple[str, int, bool]] = []
    while pos < stop and len(out) <= stop_after:
        if pos < 0 or pos + 46 > len(data) or data[pos:pos + 4] != b"PK\x01\x02":
            break
        flags, = struct.unpack_from("<H", data, pos + 8)
        size, = struct.unpack_from("<I", data, pos + 24)
        n_name, n_extra, n_comment = struct.unpack_from("<HHH", data, pos + 28)
        raw = data[pos + 46:pos + 46 + n_name]
        out.append((raw.decode("utf-8" if flags & 0x800 else "cp437", "replace"), size,
                    bool(flags & 0x1)))
        pos += 46 + n_name + n_extra + n_comment
    return out


def _read_zip(w: _Walker, data: bytes) -> Iterator[ReadResult]:
    listing = zip_directory(data, w.limits.max_members)
    if listing is not None and len(listing) > w.limits.max_members:
        w.flag_bomb(f"more than {w.limits.max_members} members")
        for name, size, encrypted in listing:      # names still judged; nothing read
            if not name.endswith("/"):
                yield name, size, None, encrypted
        return
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        if len(infos) > w.limits.max_members:
            w.flag_bomb(f"{len(infos)} members")
        declared = sum(i.file_size for i in infos)
        packed = max(1, sum(i.compress_size for i in infos))
        if declared > _BOMB_FLOOR and declared // packed > w.limits.max_ratio:
            w.flag_bomb(f"declared expansion {declared // packed}:1 ({declared >> 20} MiB)")
        spans = sorted((i.header_offset, i.header_offset + 30 + len(i.orig_filename.encode(
            "utf-8", "surrogateescape")) + i.compress_size) for i in infos)
        for (_, end_a), (start_b, _) in zip(spans, spans[1:]):
            if start_b < end_a:
                w.flag_bomb("overlapping members (a zip bomb trick)")
                break
        for info in infos:
            if info.is_dir():
                continue
            encrypted = bool(info.flag_bits & 0x1)
            if encrypted or w.facts.bomb:
                yield info.filename, info.file_size, None, encrypted
                continue
            want = w.take(w.want_bytes(_kind_hint(info.filename), info.file_size) or HEAD_BYTES)
            try:
                with zf.open(info) as fh:
                    chunk = fh.read(want)
            except (NotImplementedError, RuntimeError):   # unsupported method / password
                yield info.filename, info.file_size, None, True
                continue
            w.spend(len(chunk))
            if len(chunk) < info.file_size and _kind_of(chunk) in READERS:
                chunk = _read_more(w, zf, info, chunk)
            yield info.filename, info.file_size, chunk, False


def _read_more(w: _Walker, zf: zipfile.ZipFile, info: zipfile.ZipInfo, head: bytes) -> bytes:
    """A member that turned out to be a container is read whole (within the budget)."""
    want = w.take(min(info.file_size, w.limits.max_member_bytes))
    with zf.open(info) as fh:
        whole = fh.read(want)
    w.spend(max(0, len(whole) - len(head)))
    return whole


def _kind_hint(name: str) -> str:
    ext = split_extension(name.rsplit("/", 1)[-1])[1]
    return {"zip": "zip", "jar": "zip", "docx": "zip", "xlsx": "zip", "pptx": "zip",
            "docm": "zip", "xlsm": "zip", "7z": "7z", "tar": "tar", "gz": "gzip", "tgz": "gzip",
            "bz2": "bzip2", "xz": "xz", "iso": "iso", "img": "iso", "doc": "ole", "xls": "ole",
            "ppt": "ole", "bin": "ole", "pdf": "pdf", "cab": "cab", "rar": "rar"}.get(ext, "")


def _kind_of(head: bytes) -> str:
    from .filetype import exact_kind
    return exact_kind(head, b"")[0]


def _read_7z(w: _Walker, data: bytes) -> Iterator[ReadResult]:
    import py7zr
    from py7zr.io import BytesIOFactory

    with py7zr.SevenZipFile(io.BytesIO(data)) as archive:
        if archive.needs_password():
            w.facts.encrypted = True
        infos = [i for i in archive.list() if not i.is_directory]
        declared = sum(i.uncompressed or 0 for i in infos)
        packed = max(1, len(data))
        if declared > _BOMB_FLOOR and declared // packed > w.limits.max_ratio:
            w.flag_bomb(f"declared expansion {declared // packed}:1 ({declared >> 20} MiB)")
        if archive.needs_password() or w.facts.bomb or declared > w.limits.max_expanded_bytes:
            for i in infos:
                yield i.filename, i.uncompressed or 0, None, archive.needs_password()
            return
        w.take(declared)
        factory = BytesIOFactory(w.limits.max_member_bytes)
        archive.extract(factory=factory)
        w.spend(declared)
        for i in infos:
            product = factory.products.get(i.filename)
            body = None
            if product is not None:
                product.seek(0)
                body = product.read()
            yield i.filename, i.uncompressed or 0, body, False


def _read_rar(w: _Walker, data: bytes) -> Iterator[ReadResult]:
    import rarfile   # lists names without the unrar tool; contents stay unread

    with rarfile.RarFile(io.BytesIO(data)) as rf:
        if rf.needs_password():
            w.facts.encrypted = True
        for info in rf.infolist():
            if not info.is_dir():
                yield info.filename, info.file_size, None, bool(info.needs_password())


def _read_tar(w: _Walker, data: bytes) -> Iterator[ReadResult]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for info in tf:
            if not info.isfile():
                continue
            want = w.take(w.want_bytes(_kind_hint(info.name), info.size) or HEAD_BYTES)
            fh = tf.extractfile(info)
            chunk = fh.read(want) if fh is not None else b""
            w.spend(len(chunk))
            if len(chunk) < info.size and _kind_of(chunk) in READERS and fh is not None:
                more = w.take(min(info.size, w.limits.max_member_bytes) - len(chunk))
                rest = fh.read(more)
                w.spend(len(rest))
                chunk += rest
            yield info.name, info.size, chunk, False


def _inflate(w: _Walker, data: bytes, dec) -> bytes:
    """Decompress one stream in steps, never past the budget or max_member_bytes.

    Stopping at the cap with input left over, at a ratio above max_ratio, is a bomb.
    """
    want = w.take(w.limits.max_member_bytes)
    out = bytearray()
    pos, step = 0, 1 << 16
    pending = b""
    while len(out) < want and not dec.eof:
        if pending:
            chunk, pending = pending, b""
        elif hasattr(dec, "needs_input") and not dec.needs_input:
            chunk = b""                          # bz2/lzma still hold buffered input
        elif pos < len(data):
            chunk = data[pos:pos + step]
            pos += len(chunk)
        else:
            break
        out += dec.decompress(chunk, want - len(out))
        pending = getattr(dec, "unconsumed_tail", b"")    # zlib keeps it outside
    w.spend(len(out))
    consumed = max(1, pos - len(pending))
    if len(out) >= want and not dec.eof and len(out) // consumed > w.limits.max_ratio:
        w.flag_bomb(f"expands more than {w.limits.max_ratio}:1 past {want >> 20} MiB")
    return bytes(out)


def _gzip_name(data: bytes) -> str:
    if len(data) > 10 and data[3] & 0x08:   # FNAME
        start = 10
        if data[3] & 0x04 and len(data) > 12:   # FEXTRA
            start += 2 + struct.unpack_from("<H", data, 10)[0]
        end = data.find(b"\0", start)
        if end > start:
            return data[start:end].decode("latin-1")
    return ""


def _single(kind: str):
    """Reader for a single compressed stream (gzip, bzip2, xz): one member."""
    def reader(w: _Walker, data: bytes) -> Iterator[ReadResult]:
        if kind == "gzip":
            body = _inflate(w, data, zlib.decompressobj(16 + zlib.MAX_WBITS))
            inner = _gzip_name(data) or "(gzip content)"
        elif kind == "bzip2":
            body, inner = _inflate(w, data, bz2.BZ2Decompressor()), "(bzip2 content)"
        else:
            body, inner = _inflate(w, data, lzma.LZMADecompressor()), "(xz content)"
        yield inner, len(body), body, False
    return reader


def _read_cab(w: _Walker, data: bytes) -> Iterator[ReadResult]:
    """Names from the CFFILE table (MS-CAB). Contents stay unread (MSZIP/LZX)."""
    if len(data) < 36:
        raise ValueError("truncated cabinet header")
    coff_files, = struct.unpack_from("<I", data, 16)
    n_files, flags = struct.unpack_from("<HH", data, 28)
    if coff_files >= len(data):
        raise ValueError("file table past the end")
    pos = coff_files
    for _ in range(n_files):
        if pos + 16 > len(data):
            raise ValueError("truncated file table")
        size, = struct.unpack_from("<I", data, pos)
        attribs, = struct.unpack_from("<H", data, pos + 14)
        end = data.find(b"\0", pos + 16, pos + 16 + 512)
        if end < 0:
            raise ValueError("unterminated member name")
        raw = data[pos + 16:end]
        name = raw.decode("utf-8" if attribs & 0x80 else "cp437", "replace")
        pos = end + 1
        yield name, size, None, False


def _read_iso(w: _Walker, data: bytes) -> Iterator[ReadResult]:
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        if iso.has_udf():
            facet, key = "udf_path", "udf_path"
        elif iso.has_joliet():
            facet, key = "joliet_path", "joliet_path"
        elif iso.has_rock_ridge():
            facet, key = "rr_path", "rr_path"
        else:
            facet, key = "iso_path", "iso_path"
        for dirpath, _dirs, files in iso.walk(**{facet: "/"}):
            for fname in files:
                full = dirpath.rstrip("/") + "/" + fname
                shown = fname[:-2] if key == "iso_path" and fname.endswith(";1") else fname
                try:
                    size = iso.get_record(**{key: full}).get_data_length()
                except Exception:
                    size = 0
                want = w.take(w.want_bytes(_kind_hint(shown), size) or HEAD_BYTES)
                with iso.open_file_from_iso(**{key: full}) as fh:
                    chunk = fh.read(want)
                w.spend(len(chunk))
                name = (dirpath.rstrip("/") + "/" + shown).lstrip("/")
                yield name, size, chunk, False
    finally:
        iso.close()


def ole_size_problem(ole, data_len: int) -> str:
    """Why an opened OLE file's streams cannot be read safely, or "".

    olefile reads a whole stream into memory as soon as it is opened, following the sector
    chain for as many sectors as the declared size asks: an 18 KB file with a stream that
    claims 1.4 GB took 3 GB and 11 s in olevba, a 3 KB one whose root entry claims 84 MB
    took 9 GB and 33 s. In a real file every sector belongs to one stream, so what olefile
    may read fits in the file: each stream, the root entry (the mini stream), the MiniFAT,
    the FAT itself (a stream of unknown size, such as the directory, is read up to the
    FAT's length); and the streams together, the mini streams counted twice (once more
    inside the root entry). Orphan entries (outside the tree) count too: olevba reads every
    directory entry, and a 758-byte file with 256-byte sectors whose orphan stream claims
    2**60 bytes looped round a two-entry FAT until the memory ran out.
    """
    import olefile

    limit = data_len + 65536
    sector = max(1, int(getattr(ole, "sector_size", 512) or 512))
    checks = [("the FAT", len(getattr(ole, "fat", None) or ()) * sector),
              ("the MiniFAT", (getattr(ole, "num_mini_fat_sectors", 0) or 0) * sector)]
    root = getattr(ole, "root", None)
    if root is not None:
        checks.append(("the root entry", root.size))
    total = 0
    for sid in range(len(ole.direntries or ())):
        entry = ole.direntries[sid]
        if entry is None:                 # an orphan: olevba reads those too
            try:
                entry = ole._load_direntry(sid)
            except Exception:  # noqa: BLE001 - an unreadable entry is never opened
                continue
        if entry is None or entry.entry_type == olefile.STGTY_STORAGE:
            continue                      # a storage's size is never read
        total += max(0, entry.size)
        checks.append((f"stream {str(entry.name)[:40]!r}", entry.size))
    checks.append(("all streams", total - data_len))
    for what, size in checks:
        if size > limit:
            return f"OLE {what} declares {size} bytes in a file of {data_len} bytes"
    return ""


def _read_ole(w: _Walker, data: bytes) -> Iterator[ReadResult]:
    """Embedded files in OLE compound documents: OLE Package (Ole10Native) payloads."""
    import olefile
    from oletools.oleobj import OleNativeStream

    with olefile.OleFileIO(io.BytesIO(data)) as ole:
        problem = ole_size_problem(ole, len(data))
        if problem:
            raise ValueError(problem)
        for entry in ole.listdir(streams=True, storages=False):
            leaf = entry[-1]
            if leaf.lower() == "\x01ole10native":
                raw = ole.openstream(entry).read(w.take(w.limits.max_member_bytes))
                w.spend(len(raw))
                native = OleNativeStream(raw)
                name = native.filename or native.src_path or "/".join(entry)
                body = native.data if isinstance(native.data, (bytes, bytearray)) else b""
                yield str(name), len(body), bytes(body), False
            elif entry[0].lower().startswith("__attach_version1.0_") and \
                    leaf.lower() == "__substg1.0_37010102":
                yield _msg_attachment(w, ole, entry)
            elif leaf.lower() in ("package", "contents", "\x01ole", "\x01compobj") or \
                    leaf.startswith("\x03"):
                continue
            elif ole.get_size(entry) >= 64 and entry[0].lower() in ("objectpool", "objinfo"):
                # embedded objects' own storages: identify their streams by content
                head = ole.openstream(entry).read(w.take(HEAD_BYTES))
                w.spend(len(head))
                yield "/".join(entry), ole.get_size(entry), head, False


def _msg_attachment(w: _Walker, ole, entry: list[str]) -> ReadResult:
    """An Outlook .msg attachment: data stream plus its (long) file name."""
    name = ""
    for tag in ("__substg1.0_3707001F", "__substg1.0_3704001F"):
        path = [entry[0], tag]
        if ole.exists("/".join(path)):
            name = ole.openstream(path).read(1024).decode("utf-16-le", "replace").rstrip("\0")
            break
    size = ole.get_size(entry)
    want = w.take(w.want_bytes(_kind_hint(name), size) or HEAD_BYTES)
    body = ole.openstream(entry).read(want)
    w.spend(len(body))
    return name or "/".join(entry), size, body, False


def _read_pdf(w: _Walker, data: bytes) -> Iterator[ReadResult]:
    """Attached files (EmbeddedFiles name tree and file-attachment annotations)."""
    if b"/EmbeddedFile" not in data and b"/Embedded#46ile" not in data:
        return
    import logging

    import pypdf

    from pypdf.errors import LimitReachedError

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
    try:
        for name, load in _pdf_attachments(reader):
            w.take(1)               # budget spent: stop before inflating one more file
            body = load()
            take = w.take(min(len(body), w.limits.max_member_bytes))
            w.spend(take)
            yield name, len(body), body[:take], False
    except LimitReachedError as exc:        # pypdf's own cap on what a stream inflates to
        w.flag_bomb(f"an attached file expands past pypdf's limit ({exc})"[:200])


def _pdf_attachments(reader) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """(name, inflate) per attached file, inflated only when asked. pypdf's
    ``attachments`` inflates every file of one name at once (up to 75 MB each): twenty
    files named alike in a 1.3 MB PDF took 1.5 GB before any budget could be checked."""
    entries = getattr(type(reader), "attachment_list", None)
    if entries is not None:                       # pypdf >= 5: one file at a time
        for entry in reader.attachment_list:
            yield str(entry.name), (lambda e=entry: e.content)
        return
    for name, bodies in reader.attachments.items():          # older pypdf
        for body in bodies:
            yield str(name), (lambda b=body: b)


READERS: dict[str, Callable[[_Walker, bytes], Iterator[ReadResult]]] = {
    "zip": _read_zip, "ooxml": _read_zip, "odf": _read_zip, "epub": _read_zip, "jar": _read_zip,
    "7z": _read_7z, "rar": _read_rar, "tar": _read_tar, "cab": _read_cab,
    "gzip": _single("gzip"), "bzip2": _single("bzip2"), "xz": _single("xz"),
    "iso": _read_iso, "udf": _read_iso, "ole": _read_ole, "pdf": _read_pdf,
}
# Container formats that are recognised but cannot be opened here.
UNINSPECTED = frozenset({"dmg", "vhd"})
