"""The quarantine vault: move flagged files out of reach, safely and reversibly.

Layout (the vault folder is owner-only, 0700)::

    journal.jsonl      intent / commit / rollback / restore / purge records, each fsynced
    items/ID.bin       the content, neutralised: a header line then every byte XOR 0xA5,
                       mode 0600, no extension: it cannot run or open by double-click
    items/ID.json      metadata: original path, sha256, size, owner, mode, times,
                       provenance, verdict, reasons, rules, time of quarantine
    tmp/ID.part        copies in progress

Crash safety: the intent reaches disk before anything moves; the copy is fsynced and its
hash verified before the source is touched; the commit follows the unlink. On start,
``recover()`` completes or rolls back every intent without an outcome, so after any crash
each file is either in place or in the vault, exactly once.

Race safety: the file is reached from its watched folder one component at a time with
O_NOFOLLOW, so a folder swapped for a link is never followed; everything after that acts
on the opened descriptors. A file whose inode, size or mtime differ from what was scanned
is not moved (FileChanged: rescan it). The source is removed by renaming it aside inside
its own folder and unlinking only if the renamed entry is the inode that was copied.
A restore to the original place walks from "/" and follows only links root made (the
watched folder itself may have been swapped for a link), and only to the place the
journal saw the file leave.

Tests: ``Vault.step_hook`` is called after the steps "intent", "copy", "fsync",
"rename", "meta", "aside", "unlink", "commit" of a quarantine, "restore-write" of a
restore, and "recover-unlink", "recover-commit", "recover-link", "recover-putback",
"recover-discard", "recover-rollback" of a recovery (tests/hostile/test_vault.py kills
the process or swaps folders there).
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import errno
import hashlib
import json
import os
import secrets
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import FileChanged, QuarantineError
from ..hashing import BackgroundSha256
from ..verdict import FileIdentity

HEADER = b"GUARD-QUARANTINE-1\n"
_XOR = bytes(b ^ 0xA5 for b in range(256))
_CHUNK = 1 << 20
_REMOVING = ".guard-{id}.removing"


def neutralise(data: bytes) -> bytes:
    """Reversible: neutralise(neutralise(x)) == x."""
    return data.translate(_XOR)


@dataclass(frozen=True)
class Item:
    id: str
    meta: dict[str, Any]

    @property
    def original_path(self) -> str:
        return self.meta["original_path"]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _fsync_dir(path: Path | int) -> None:
    fd = path if isinstance(path, int) else os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        if not isinstance(path, int):
            os.close(fd)


def _safe_component(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name \
        and "\n" not in name


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LINKS_MAX = 40


def _open_folder_strictly(folder: Path) -> int:
    """A descriptor for the absolute *folder*, walked from "/" one component at a time.

    A link on the way is followed only when nobody but root could have made or replaced
    it: the link is root's (or ours) and sits in a root-owned folder that nobody else may
    write to, or that is sticky. So ``/home -> /usr/home`` works, while a user's folder
    swapped for a link (``~/Downloads -> /etc/profile.d``) is refused: restoring through
    it would let the user choose where root writes a file (AVGater).
    Raises FileChanged for an untrusted link, QuarantineError when the folder is missing.
    """
    trusted = {0, os.geteuid()}
    parts = [p for p in str(folder).split("/") if p not in ("", ".")]
    here: list[str] = []                       # the real folders walked so far
    fd = os.open("/", _DIR_FLAGS)
    links = 0
    try:
        while parts:
            part = parts.pop(0)
            if part == "..":                   # only from a link's target: fd is real
                nxt = os.open("..", _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nxt
                here = here[:-1]
                continue
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                where = "/" + "/".join(here + [part])
                if not stat.S_ISLNK(st.st_mode):
                    raise FileChanged("a folder on the way is a file", path=where) from None
                holder = os.fstat(fd)
                if not (st.st_uid in trusted and holder.st_uid in trusted and (
                        not holder.st_mode & 0o022 or holder.st_mode & stat.S_ISVTX)):
                    raise FileChanged("refused: a folder on the way is a link that someone "
                                      "other than root could have made (or swapped in); "
                                      "restore it with --to", path=where) from None
                links += 1
                if links > _LINKS_MAX:
                    raise FileChanged("too many links on the way", path=where) from None
                target = os.readlink(part, dir_fd=fd)
                if target.startswith("/"):
                    os.close(fd)
                    fd = os.open("/", _DIR_FLAGS)
                    here = []
                parts = [p for p in target.split("/") if p not in ("", ".")] + parts
                continue
            os.close(fd)
            fd = nxt
            here.append(part)
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_below(root: Path, rel_parts: tuple[str, ...], *, strict_root: bool = False) -> int:
    """A descriptor for root/rel_parts..., refusing any link below root (O_NOFOLLOW).

    *root* itself (a configured watched folder) is opened as named, links and all, unless
    *strict_root*: then it is walked from "/" and only root's own links are followed.
    """
    try:
        fd = _open_folder_strictly(root) if strict_root else os.open(
            root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise QuarantineError(f"cannot open folder: {exc.strerror}", path=str(root)) from None
    try:
        for part in rel_parts:
            if not _safe_component(part):
                raise QuarantineError(f"unsafe path component {part!r}", path=str(root))
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=fd)
            os.close(fd)
            fd = nxt
        return fd
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise FileChanged("a folder on the way was replaced by a link or a file",
                              path=str(root.joinpath(*rel_parts))) from None
        raise QuarantineError(f"cannot open folder: {exc.strerror}",
                              path=str(root.joinpath(*rel_parts))) from None
    except BaseException:
        os.close(fd)
        raise


class Vault:
    """Thread-safe. One per vault folder; recover() before first use after a start."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.items = self.folder / "items"
        self.tmp = self.folder / "tmp"
        self.journal_path = self.folder / "journal.jsonl"
        self._lock = threading.Lock()
        for d in (self.folder, self.items, self.tmp):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(d, 0o700)
        # test hook: a callable(step) run between steps (crash and race tests)
        self.step_hook = None

    # --- journal -------------------------------------------------------------------------
    def _journal(self, record: dict[str, Any]) -> None:
        record = {"time": _now(), **record}
        line = (json.dumps(record, sort_keys=True, ensure_ascii=True) + "\n").encode()
        fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _journal_records(self) -> list[dict[str, Any]]:
        try:
            raw = self.journal_path.read_bytes()
        except FileNotFoundError:
            return []
        out = []
        for line in raw.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue          # a torn last line from a crash: its step never happened
            if isinstance(record, dict) and isinstance(record.get("id"), str):
                out.append(record)
        return out

    def _step(self, name: str) -> None:
        if self.step_hook is not None:
            self.step_hook(name)

    # --- quarantine ----------------------------------------------------------------------
    def quarantine(self, root: Path, path: Path, identity: FileIdentity, sha256: str,
                   meta: dict[str, Any]) -> Item:
        """Move *path* (inside the watched folder *root*) into the vault, if it is still
        the file that was scanned (*identity*) with the content that was judged (*sha256*).

        Raises FileChanged when the file is not the one scanned (rescan it), and
        QuarantineError when it cannot be moved; in both cases the file stays in place.
        """
        root, path = Path(root), Path(path)
        try:
            rel = path.relative_to(root).parts
        except ValueError:
            raise QuarantineError("file is outside its watched folder", path=str(path)) from None
        if not rel:
            raise QuarantineError("nothing to quarantine", path=str(path))
        item_id = f"{_dt.datetime.now(_dt.timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(6)}"
        with self._lock:
            dir_fd = open_below(root, rel[:-1])
            try:
                return self._quarantine_at(dir_fd, root, rel, path, identity, sha256, meta,
                                           item_id)
            except OSError as exc:
                # e.g. a full vault disk: the copy was discarded and the file is in place;
                # say so in one line instead of a bare "[Errno 28]".
                raise QuarantineError(f"not moved, the file stays in place: "
                                      f"{exc.strerror or exc}", path=str(path)) from exc
            finally:
                os.close(dir_fd)

    def _quarantine_at(self, dir_fd: int, root: Path, rel: tuple[str, ...], path: Path,
                       identity: FileIdentity, sha256: str, meta: dict[str, Any],
                       item_id: str) -> Item:
        name = rel[-1]
        try:
            src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                          dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOENT):
                raise FileChanged("the file was replaced or removed after its scan",
                                  path=str(path)) from None
            raise QuarantineError(f"cannot open: {exc.strerror}", path=str(path)) from None
        try:
            st = os.fstat(src)
            self._check_identity(st, identity, path, dir_fd)
            self._journal({"op": "intent", "id": item_id, "root": str(root),
                           "rel": list(rel), "dev": st.st_dev, "ino": st.st_ino,
                           "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                           "sha256": sha256})
            self._step("intent")
            self._copy(src, item_id, sha256, path)
            record = {
                **meta, "id": item_id, "original_path": str(path), "root": str(root),
                "rel": list(rel), "sha256": sha256, "size": st.st_size,
                "uid": st.st_uid, "gid": st.st_gid, "mode": stat.S_IMODE(st.st_mode),
                "atime_ns": st.st_atime_ns, "mtime_ns": st.st_mtime_ns,
                "quarantined_at": _now(),
            }
            self._write_meta(item_id, record)
            self._step("meta")
            self._remove_source(dir_fd, name, st, item_id, path)
        except BaseException:
            self._discard_partial(item_id)
            raise
        finally:
            os.close(src)
        # The source is unlinked: the vault copy is the only copy now and is never
        # discarded, whatever fails next. (Before, a failed fsync or a commit record that
        # did not fit on a full vault disk discarded it too: the file was lost.) Without
        # the commit record, recover() finds the item complete and writes it.
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        self._step("unlink")
        try:
            self._journal({"op": "commit", "id": item_id})
        except OSError:
            pass
        self._step("commit")
        return Item(item_id, record)

    @staticmethod
    def _check_identity(st: os.stat_result, identity: FileIdentity, path: Path, dir_fd: int
                        ) -> None:
        if not stat.S_ISREG(st.st_mode):
            raise FileChanged("no longer a regular file", path=str(path))
        # Not the ctime: a download's metadata (xattrs) may be set after the scan; the
        # content itself is checked by its hash while it is copied.
        if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != (
                identity.dev, identity.ino, identity.size, identity.mtime_ns):
            raise FileChanged("the file changed after its scan", path=str(path))
        if st.st_nlink > 1:
            raise QuarantineError("refused: the file has other hard links (it may be a "
                                  "link to a file outside the watched folder)", path=str(path))
        folder_owner = os.fstat(dir_fd).st_uid
        if st.st_uid not in (folder_owner, os.geteuid()):
            raise QuarantineError(f"refused: owned by uid {st.st_uid}, not by the folder's "
                                  f"owner {folder_owner}", path=str(path))

    def _copy(self, src: int, item_id: str, sha256: str, path: Path) -> None:
        part = self.tmp / f"{item_id}.part"
        out = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600)
        h = BackgroundSha256()            # hashes each chunk while the next is written
        try:
            os.write(out, HEADER)
            os.lseek(src, 0, os.SEEK_SET)
            while True:
                chunk = os.read(src, _CHUNK)
                if not chunk:
                    break
                h.feed(chunk)
                view = memoryview(neutralise(chunk))
                while view:
                    view = view[os.write(out, view):]
            self._step("copy")
            os.fsync(out)
            self._step("fsync")
        finally:
            os.close(out)
            digest = h.hexdigest()
        if digest != sha256:
            raise FileChanged("the content changed after its scan", path=str(path))
        os.replace(part, self.items / f"{item_id}.bin")
        _fsync_dir(self.items)
        self._step("rename")

    def _write_meta(self, item_id: str, record: dict[str, Any]) -> None:
        tmp = self.tmp / f"{item_id}.json"
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True, ensure_ascii=True))
        os.chmod(tmp, 0o600)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.items / f"{item_id}.json")
        _fsync_dir(self.items)

    def _remove_source(self, dir_fd: int, name: str, st: os.stat_result, item_id: str,
                       path: Path) -> None:
        aside = _REMOVING.format(id=item_id)
        os.rename(name, aside, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        try:
            self._step("aside")
            now = os.stat(aside, dir_fd=dir_fd, follow_symlinks=False)
        except BaseException:
            # The vault copy is about to be discarded: our file must not stay aside.
            if _same_inode(dir_fd, aside, st):
                _put_back(dir_fd, aside, name)
            raise
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            # Another file took the name between our open and the rename: give it its
            # name back and roll the vault copy back; the new file gets its own scan.
            _put_back(dir_fd, aside, name)
            raise FileChanged("the file was swapped during quarantine", path=str(path))
        os.unlink(aside, dir_fd=dir_fd)

    def _discard_partial(self, item_id: str) -> None:
        for p in (self.tmp / f"{item_id}.part", self.tmp / f"{item_id}.json",
                  self.items / f"{item_id}.json", self.items / f"{item_id}.bin"):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        try:
            self._journal({"op": "rollback", "id": item_id})
        except OSError:
            pass

    # --- recovery ------------------------------------------------------------------------
    def recover(self) -> list[tuple[str, str]]:
        """Finish or undo every quarantine a crash interrupted. Returns (id, outcome)."""
        with self._lock:
            records = self._journal_records()
            done = {r["id"] for r in records if r.get("op") in ("commit", "rollback")}
            outcomes = []
            for r in records:
                if r.get("op") != "intent" or r["id"] in done:
                    continue
                outcomes.append((r["id"], self._recover_one(r)))
            for p in self.tmp.iterdir():          # copies whose intent never reached disk
                if not any(p.name.startswith(i) for i, _ in outcomes):
                    p.unlink(missing_ok=True)
            return outcomes

    def _recover_one(self, intent: dict[str, Any]) -> str:
        item_id, rel = intent["id"], tuple(intent["rel"])
        complete = (self.items / f"{item_id}.bin").exists() and \
            (self.items / f"{item_id}.json").exists() and self._verify(item_id, intent["sha256"])
        try:
            dir_fd = open_below(Path(intent["root"]), rel[:-1])
        except (QuarantineError, OSError):
            dir_fd = -1
        try:
            aside = _REMOVING.format(id=item_id)
            if complete:
                if dir_fd >= 0:
                    for candidate in (aside, rel[-1]):
                        if _same_inode(dir_fd, candidate, intent):
                            os.unlink(candidate, dir_fd=dir_fd)
                            os.fsync(dir_fd)
                            self._step("recover-unlink")
                self._journal({"op": "commit", "id": item_id, "recovered": True})
                self._step("recover-commit")
                return "completed"
            if dir_fd >= 0 and _same_inode(dir_fd, aside, intent):
                _put_back(dir_fd, aside, rel[-1], self._step)
                self._step("recover-putback")
            for p in (self.tmp / f"{item_id}.part", self.tmp / f"{item_id}.json",
                      self.items / f"{item_id}.bin", self.items / f"{item_id}.json"):
                p.unlink(missing_ok=True)
                self._step("recover-discard")
            self._journal({"op": "rollback", "id": item_id, "recovered": True})
            self._step("recover-rollback")
            return "rolled-back"
        finally:
            if dir_fd >= 0:
                os.close(dir_fd)

    def _intent_of(self, item_id: str) -> dict[str, Any] | None:
        """The journal's intent record for *item_id*: where the file was taken from."""
        try:
            raw = self.journal_path.read_bytes()
        except FileNotFoundError:
            return None
        needle = json.dumps({"id": item_id}, ensure_ascii=True)[1:-1].encode()
        pos = raw.find(needle)
        while pos >= 0:                  # only the few lines that name this id are parsed
            start = raw.rfind(b"\n", 0, pos) + 1
            end = raw.find(b"\n", pos)
            end = len(raw) if end < 0 else end
            try:
                record = json.loads(raw[start:end])
            except ValueError:
                record = None
            if isinstance(record, dict) and record.get("op") == "intent" and \
                    record.get("id") == item_id:
                return record
            pos = raw.find(needle, end)
        return None

    def _verify(self, item_id: str, sha256: str) -> bool:
        try:
            return hashlib.sha256(self.read_content(item_id)).hexdigest() == sha256
        except (OSError, QuarantineError):
            return False

    # --- listing, restore, purge ---------------------------------------------------------
    def list(self) -> list[Item]:
        out = []
        for p in sorted(self.items.glob("*.json")):
            try:
                out.append(Item(p.stem, json.loads(p.read_text())))
            except (OSError, ValueError):
                continue
        return out

    def get(self, item_id: str) -> Item:
        if not _safe_component(item_id) or item_id.startswith("."):
            raise QuarantineError(f"no quarantined item {item_id!r}")
        p = self.items / f"{item_id}.json"
        try:
            return Item(item_id, json.loads(p.read_text()))
        except FileNotFoundError:
            raise QuarantineError(f"no quarantined item {item_id!r}") from None
        except ValueError:
            raise QuarantineError("metadata is damaged", path=str(p)) from None

    def read_content(self, item_id: str) -> bytes:
        raw = (self.items / f"{item_id}.bin").read_bytes()
        if not raw.startswith(HEADER):
            raise QuarantineError("not a quarantine file", path=str(self.items / item_id))
        return neutralise(raw[len(HEADER):])

    def iter_content(self, item_id: str) -> Iterator[bytes]:
        with open(self.items / f"{item_id}.bin", "rb") as fh:
            if fh.read(len(HEADER)) != HEADER:
                raise QuarantineError("not a quarantine file", path=str(self.items / item_id))
            while chunk := fh.read(_CHUNK):
                yield neutralise(chunk)

    def restore(self, item_id: str, to: Path | None = None) -> Path:
        """Write the file back (to its folder, or into folder *to*). Refuses to overwrite,
        to follow links, or to leave the original folder without *to*. Returns the path."""
        with self._lock:
            item = self.get(item_id)
            meta = item.meta
            root, rel = _validated_location(meta)
            name = rel[-1]
            if to is None:
                # The place to write to comes from the item's metadata: it must be where
                # the journal saw the file leave, so an edited .json (a tampered or
                # restored-from-backup vault) cannot point root's write somewhere else.
                intent = self._intent_of(item_id)
                if intent is None or intent.get("root") != meta["root"] or \
                        intent.get("rel") != meta["rel"]:
                    raise QuarantineError(
                        "refused: the item's recorded location does not match the vault "
                        "journal; restore it with --to", path=str(self.items / f"{item_id}.json"))
            if to is not None:
                to = Path(to)
                if to.is_dir():
                    root, rel = to, (name,)
                else:
                    root, rel = to.parent, (to.name,)
                if not _safe_component(rel[-1]):
                    raise QuarantineError("unsafe target name", path=str(to))
            # Back to the original folder: only through links root made (a user may have
            # swapped a folder on the way for a link to where they cannot write). A --to
            # path is the administrator's own choice and is opened as given.
            dir_fd = open_below(root, rel[:-1], strict_root=to is None)
            try:
                target = root.joinpath(*rel)
                mode = meta["mode"] & 0o777          # never setuid/setgid/sticky
                try:
                    fd = os.open(rel[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
                except FileExistsError:
                    raise QuarantineError("refused: a file with that name exists; use --to",
                                          path=str(target)) from None
                try:
                    h = hashlib.sha256()
                    for chunk in self.iter_content(item_id):
                        h.update(chunk)
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(fd, view):]
                    if h.hexdigest() != meta["sha256"]:
                        raise QuarantineError("vault copy is damaged (hash mismatch)",
                                              path=str(self.items / item_id))
                    if os.geteuid() == 0:
                        os.fchown(fd, meta["uid"], meta["gid"])
                    os.fchmod(fd, mode)
                    os.utime(fd, ns=(meta["atime_ns"], meta["mtime_ns"]))
                    os.fsync(fd)
                    self._step("restore-write")
                except BaseException:
                    # Remove what we created, not whatever took the name since.
                    if _same_inode(dir_fd, rel[-1], os.fstat(fd)):
                        os.unlink(rel[-1], dir_fd=dir_fd)
                    raise
                finally:
                    os.close(fd)
            finally:
                os.close(dir_fd)
            self._journal({"op": "restore", "id": item_id, "to": str(target)})
            self._delete(item_id)
            return target

    def purge(self, item_id: str) -> Item:
        with self._lock:
            item = self.get(item_id)
            self._delete(item_id)
            self._journal({"op": "purge", "id": item_id})
            return item

    def older_than(self, days: float) -> list[Item]:
        cutoff = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(days=days)
        out = []
        for item in self.list():
            try:
                when = _dt.datetime.fromisoformat(item.meta["quarantined_at"].replace("Z",
                                                                                     "+00:00"))
            except (KeyError, ValueError):
                continue
            if when < cutoff:
                out.append(item)
        return out

    def _delete(self, item_id: str) -> None:
        for suffix in (".bin", ".json"):
            (self.items / f"{item_id}{suffix}").unlink(missing_ok=True)
        _fsync_dir(self.items)


_META_INTS = ("mode", "uid", "gid", "atime_ns", "mtime_ns")


def _validated_location(meta: dict[str, Any]) -> tuple[Path, tuple[str, ...]]:
    """Root and relative parts from metadata, refusing anything that could escape
    (and damaged fields that would fail half-way through a restore)."""
    root, rel = meta.get("root"), meta.get("rel")
    if not isinstance(root, str) or not os.path.isabs(root) or "\0" in root or \
            "\n" in root or os.path.normpath(root) != root.rstrip("/") and root != "/":
        raise QuarantineError(f"refused: unsafe folder in metadata: {root!r}")
    if not isinstance(rel, list) or not rel or not all(
            isinstance(p, str) and _safe_component(p) for p in rel):
        raise QuarantineError(f"refused: unsafe path in metadata: {rel!r}")
    original = meta.get("original_path")
    if original != os.path.join(root, *rel):
        raise QuarantineError("refused: metadata path fields disagree")
    for key in _META_INTS:
        if type(meta.get(key)) is not int or meta[key] < 0:
            raise QuarantineError(f"refused: damaged metadata field {key!r}")
    if not isinstance(meta.get("sha256"), str):
        raise QuarantineError("refused: damaged metadata field 'sha256'")
    return Path(root), tuple(rel)


def _same_inode(dir_fd: int, name: str, want: dict[str, Any] | os.stat_result) -> bool:
    """*name* is the file *want* describes (an intent record, or a stat result): same
    device and inode, and same size and mtime when the intent has them, so that an inode
    number reused by a new file after a crash is not taken for ours."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    if isinstance(want, os.stat_result):
        return (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino)
    if (st.st_dev, st.st_ino) != (want["dev"], want["ino"]):
        return False
    return all(getattr(st, f"st_{k}") == want[k] for k in ("size", "mtime_ns") if k in want)


_RENAME_NOREPLACE = 1


def _renameat2_noreplace() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None                   # not Linux, or glibc < 2.28
    fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _renameat2_noreplace()


def _put_back(dir_fd: int, aside: str, name: str, step: Any = None) -> None:
    """Rename *aside* back to *name* without overwriting anything that took its place.

    One renameat2(RENAME_NOREPLACE) where the system has it: it also puts back a folder
    (an entry swapped for a folder is renamed aside too, and link() cannot restore it:
    the user's folder stayed under the aside name). Else link, then unlink. Either way a
    put-back cut short between link and unlink (a crash) is finished on the next try,
    instead of leaving the same file twice in the user's folder.
    """
    taken = False
    if _renameat2 is not None:
        if _renameat2(dir_fd, os.fsencode(aside), dir_fd, os.fsencode(name),
                      _RENAME_NOREPLACE) == 0:
            os.fsync(dir_fd)
            return
        err = ctypes.get_errno()
        if err not in (errno.EEXIST, errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err), aside)
        taken = err == errno.EEXIST
    if not taken:
        try:
            os.link(aside, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            taken = True
    if taken:
        try:
            holder = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            holder = None
        if holder is None or not _same_inode(dir_fd, aside, holder):
            os.fsync(dir_fd)          # a new file holds the name: ours stays aside
            return
    if step is not None:
        step("recover-link")
    os.unlink(aside, dir_fd=dir_fd)
    os.fsync(dir_fd)
