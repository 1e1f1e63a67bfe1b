"""Hostile world, the vault (issue cases 1-5): the agent runs as root and moves files that
users control into the quarantine vault, the attack surface of the AV quarantine privilege
escalations (RACK911 2020: folder swapped for a link between scan and move; AVGater
2017: restore made to write where the user chooses).

The attacker is the employee (uid USER), who owns the watched folder and swaps folders
for links to a root-owned canary folder; each case counts what must never happen (a
canary changed, a file lost or duplicated, a leftover, an unclean refusal) as failures.
Every race and crash here is real: a second process swaps folders while the vault works,
the vault's step hook pauses it at each step, and kill -9 hits real processes. See
vault_world.py for the folders, the canary and the attacker.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import guard.actions.quarantine as quarantine
from figures import CASES, case, check
from guard.actions.quarantine import Vault
from guard.errors import FileChanged, QuarantineError
from vault_world import (USER, Expected, Racer, Swap, World, diff, expected_for, make_world, run_child,
                         sha256, snapshot, tmpfs, write_at)

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux",
                                reason="the vault's hostile cases need root on Linux")

NAME = "evil.bin"             # the flagged file: the canary holds one of the same name
GIFT = "gift.bin"             # restored files: the canary has none, an escape creates one
OLD = "old.bin"               # purged items: the canary has one, an escape removes it
BEFORE_UNLINK = ("intent", "copy", "fsync", "rename", "meta", "aside")
DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class Injected(Exception):
    """A fault the test raises from a step hook."""


def _payload(i: int, rng: random.Random, sizes=(64, 4096, 70_000)) -> bytes:
    return b"MZ\x90\x00" + i.to_bytes(8, "little") + rng.randbytes(rng.choice(sizes))


def _hook(step: str, action):
    """A step hook that runs *action* once, at *step*."""
    fired: list[str] = []

    def hook(name: str) -> None:
        if name == step and not fired:
            fired.append(name)
            action()
    hook.fired = fired
    return hook


def _entries(dir_fd: int) -> list[str]:
    return sorted(os.listdir(dir_fd))


def _clear(dir_fd: int) -> None:
    """Empty the folder *dir_fd* (the employee's sub folder between iterations)."""
    for name in os.listdir(dir_fd):
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            fd = os.open(name, DIR | os.O_NOFOLLOW, dir_fd=dir_fd)
            try:
                _clear(fd)
            finally:
                os.close(fd)
            os.rmdir(name, dir_fd=dir_fd)
        else:
            os.unlink(name, dir_fd=dir_fd)


def _inode_at(dir_fd: int, name: str) -> tuple[int, int] | None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _content_at(dir_fd: int, name: str) -> bytes | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        out = b""
        while chunk := os.read(fd, 1 << 20):
            out += chunk
        return out
    finally:
        os.close(fd)


def _vault_ok(vault: Vault, item_id: str, sha: str) -> bool:
    try:
        return sha256(vault.read_content(item_id)) == sha and \
            vault.get(item_id).meta["sha256"] == sha
    except (OSError, QuarantineError, KeyError):
        return False


def _count_items(vault: Vault) -> tuple[int, int]:
    names = os.listdir(vault.items)
    return (sum(n.endswith(".bin") for n in names), sum(n.endswith(".json") for n in names))


class _Fds:
    """Descriptors on the world's real folders (they stay valid while swapped)."""

    def __init__(self, world: World):
        self.home = os.open(world.home, DIR)
        self.root = os.open(world.root, DIR)
        self.sub = os.open(world.sub, DIR)

    def close(self) -> None:
        for fd in (self.home, self.root, self.sub):
            os.close(fd)

    def sub_swap(self, world: World) -> Swap:       # Downloads/sub -> canary
        return Swap(self.root, "sub", world.canary)

    def root_swap(self, world: World) -> Swap:      # ~/Downloads -> canary
        return Swap(self.home, "Downloads", world.canary)


# =====================================================================================
# Case 1: quarantine while the flagged file's folder is swapped for a link
# =====================================================================================

def _file_swap(fds: _Fds, world: World, kind: str, holder: dict):
    """The attacker replaces the flagged file itself (kept as NAME.mine)."""
    def act() -> None:
        os.rename(NAME, NAME + ".mine", src_dir_fd=fds.sub, dst_dir_fd=fds.sub)
        holder["real"] = NAME + ".mine"
        if kind == "symlink":
            os.symlink(world.canary / NAME, NAME, dir_fd=fds.sub)
        elif kind == "hardlink":
            os.link(world.canary / NAME, NAME, dst_dir_fd=fds.sub)
        else:                                           # a folder with a file in it
            os.mkdir(NAME, dir_fd=fds.sub)
            fd = os.open(NAME, DIR, dir_fd=fds.sub)
            try:
                write_at(fd, "inside.txt", b"the employee's folder\n")
            finally:
                os.close(fd)
    return act


def _quarantine_variants() -> list[tuple[str, str | None, str]]:
    """(attack, step or None for "between verdict and move", expected outcome)."""
    out: list[tuple[str, str | None, str]] = [("sub-link", None, "refused"),
                                              ("root-link", None, "refused")]
    for step in BEFORE_UNLINK:
        # Once the walk holds the folder's descriptor, a swap moves the folder, not the
        # file: the real file is moved (from wherever its folder now is), nothing else.
        out += [("sub-link", step, "moved"), ("root-link", step, "moved")]
    for step in BEFORE_UNLINK[:-1]:
        out += [(f"file-{k}", step, "refused") for k in ("symlink", "hardlink", "folder")]
    return out


def _judge_quarantine(world: World, fds: _Fds, exp: Expected, real: str, outcome: str,
                      item) -> list[str]:
    """What is wrong after one quarantine attempt (empty when it was clean)."""
    wrong = []
    here = _inode_at(fds.sub, real)
    if outcome == "moved":
        if here == (exp.dev, exp.ino):
            wrong.append("reported moved but still in place")
        if not _vault_ok(world.vault, item.id, exp.sha256):
            wrong.append("vault copy missing or wrong")
    elif outcome == "refused":
        if here != (exp.dev, exp.ino) or sha256(_content_at(fds.sub, real) or b"") != exp.sha256:
            wrong.append("refused but the real file is gone or changed")
    else:
        wrong.append(outcome)
    if os.listdir(world.vault.tmp):
        wrong.append("vault tmp leftovers")
    if any(n.startswith(".guard-") for n in _entries(fds.sub)):
        wrong.append("aside leftovers in the employee's folder")
    return wrong


def _attempt_quarantine(world: World, path: Path, exp: Expected) -> tuple[str, object]:
    try:
        return "moved", world.vault.quarantine(world.root, path, *exp.args(), {"case": "hostile"})
    except QuarantineError as exc:
        return ("refused", exc) if "\n" not in str(exc) else ("multi-line error", None)
    except Exception as exc:                     # noqa: BLE001 - an unclean outcome
        return f"crash: {type(exc).__name__}: {exc}", None


@case("1", "quarantine: folder swapped for a link to a canary", fast=600, full=10_000)
def case_quarantine_swap(n: int, workdir: Path) -> dict:
    """Half the iterations pause the vault at each step (and between verdict and move)
    and swap the file's folder, the watched folder or the file itself; half run against
    a racing process that swaps folders for links in a loop with random small delays."""
    fig = dict(iterations=0, escapes=0, moved=0, refused=0, unclean=0, unexpected=0,
               swaps=0, racer_died=0)
    world = make_world(workdir)
    fds = _Fds(world)
    canary = world.canary_snapshot()
    rng = random.Random(1)
    problems: list[str] = []

    def account(wrong: list[str], what: str) -> None:
        nonlocal canary
        now = world.canary_snapshot()
        if now != canary:
            fig["escapes"] += 1
            problems.append(f"{what}: canary {diff(canary, now)}")
            canary = now
        if wrong:
            fig["unclean"] += 1
            problems.append(f"{what}: {wrong}")

    try:
        variants = _quarantine_variants()
        deterministic = n // 2
        for i in range(deterministic):
            attack, step, want = variants[i % len(variants)]
            write_at(fds.sub, NAME, _payload(i, rng))
            exp = expected_for(NAME, dir_fd=fds.sub)
            holder = {"real": NAME}
            swaps = [fds.sub_swap(world)] if attack == "sub-link" else \
                [fds.root_swap(world)] if attack == "root-link" else []
            act = swaps[0].do if swaps else _file_swap(fds, world, attack[5:], holder)
            try:
                if step is None:
                    act()                     # between the verdict and the move
                else:
                    world.vault.step_hook = _hook(step, act)
                outcome, item = _attempt_quarantine(world, world.sub / NAME, exp)
            finally:
                world.vault.step_hook = None
                for s in swaps:
                    s.undo()
            fig["iterations"] += 1
            if outcome in ("moved", "refused"):
                fig[outcome] += 1
            if outcome != want:
                fig["unexpected"] += 1
                problems.append(f"{attack}@{step}: {outcome}, expected {want}")
            account(_judge_quarantine(world, fds, exp, holder["real"], outcome, item),
                    f"{attack}@{step}")
            if attack == "file-folder" and outcome == "refused" and not (
                    world.sub / NAME / "inside.txt").is_file():
                problems.append("the employee's folder did not get its name back")
                fig["unclean"] += 1
            _clear(fds.sub)

        racer = Racer([fds.sub_swap(world), fds.root_swap(world)], 300e-6, seed=n)
        with racer:
            for i in range(deterministic, n):
                write_at(fds.sub, NAME, _payload(i, rng))
                exp = expected_for(NAME, dir_fd=fds.sub)
                outcome, item = _attempt_quarantine(world, world.sub / NAME, exp)
                fig["iterations"] += 1
                if outcome in ("moved", "refused"):
                    fig[outcome] += 1
                account(_judge_quarantine(world, fds, exp, NAME, outcome, item),
                        "free-running")
                _clear(fds.sub)
        fig["swaps"] = racer.swaps
        fig["racer_died"] = int(racer.died)
        account([], "after the racer")
        bins, jsons = _count_items(world.vault)
        if not bins == jsons == fig["moved"]:
            fig["unclean"] += 1
            problems.append(f"vault holds {bins} .bin / {jsons} .json for {fig['moved']} moved")
    finally:
        world.vault.step_hook = None
        fds.close()
    fig["failures"] = fig["escapes"] + fig["unclean"] + fig["unexpected"] + fig["racer_died"]
    if problems:
        fig["first_problems"] = "; ".join(problems[:3])
    return fig


# =====================================================================================
# Case 2: purge and restore with a path component swapped for a link
# =====================================================================================

def _quarantined(world: World, fds: _Fds, name: str, data: bytes, mode: int = 0o640):
    write_at(fds.sub, name, data, mode=mode)
    exp = expected_for(name, dir_fd=fds.sub)
    return world.vault.quarantine(world.root, world.sub / name, *exp.args(), {}), exp


def _strays(world: World) -> list[str]:
    """Files in the employee's home outside the intended folder (Downloads/sub)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(world.home):
        rel = os.path.relpath(dirpath, world.home)
        for name in dirnames + filenames:
            p = os.path.normpath(os.path.join(rel, name))
            if p not in ("Downloads", "Downloads/sub") and not p.startswith("Downloads/sub/"):
                out.append(p)
    return out


HOSTILE_IDS = ["..", ".", "", "../canary/old", "../../canary/old.bin", "/etc/passwd",
               "x/../../y", "a\0b", "a\nb", ".hidden", "items", "../items/{id}", "{id}/..",
               "{id}.json", "{id}\0", " {id}"]


def _restore_variant(world: World, fds: _Fds, attack: str, item, exp: Expected,
                     problems: list[str]) -> str:
    """One restore under *attack*; returns "restored", "refused" or what went wrong."""
    vault = world.vault
    if attack in ("sub-link", "root-link"):
        swap = fds.sub_swap(world) if attack == "sub-link" else fds.root_swap(world)
        swap.do()
        try:
            outcome = _try_restore(vault, item.id)
        finally:
            swap.undo()
        if outcome == "refused":                   # and once undone, it works
            again = _try_restore(vault, item.id)
            if again != "restored" or sha256(_content_at(fds.sub, GIFT) or b"") != exp.sha256:
                problems.append(f"{attack}: no restore once the link was gone: {again}")
                return "unclean"
            st = os.stat(GIFT, dir_fd=fds.sub)
            if (st.st_uid, stat.S_IMODE(st.st_mode)) != (USER, 0o640):
                problems.append(f"{attack}: restored with owner {st.st_uid} mode "
                                f"{oct(st.st_mode)}")
                return "unclean"
        return outcome
    if attack in ("name-dangling", "name-existing"):
        target = world.canary / (GIFT if attack == "name-dangling" else NAME)
        os.symlink(target, GIFT, dir_fd=fds.sub)
        outcome = _try_restore(vault, item.id)
        if outcome == "refused":
            vault.purge(item.id)
        return outcome
    if attack in ("at-write-sub", "at-write-root"):
        swap = fds.sub_swap(world) if attack == "at-write-sub" else fds.root_swap(world)
        vault.step_hook = _hook("restore-write", swap.do)
        try:
            outcome = _try_restore(vault, item.id)
        finally:
            vault.step_hook = None
            swap.undo()
        if outcome == "restored" and sha256(_content_at(fds.sub, GIFT) or b"") != exp.sha256:
            problems.append(f"{attack}: restored, but not into the real folder")
            return "unclean"
        return outcome
    if attack == "at-write-fail":
        # The employee takes the name while root writes, then the restore fails: the
        # clean-up must remove root's half-restored file only, never theirs.
        def act() -> None:
            os.rename(GIFT, GIFT + ".ours", src_dir_fd=fds.sub, dst_dir_fd=fds.sub)
            write_at(fds.sub, GIFT, b"the employee's own file\n")
            raise Injected
        vault.step_hook = _hook("restore-write", act)
        try:
            outcome = _try_restore(vault, item.id)
        finally:
            vault.step_hook = None
        if _content_at(fds.sub, GIFT) != b"the employee's own file\n":
            problems.append("at-write-fail: the clean-up removed the employee's file")
            return "unclean"
        if outcome == "injected":
            outcome = "refused"
        if not _vault_ok(vault, item.id, exp.sha256):
            problems.append("at-write-fail: the vault lost the item")
            return "unclean"
        vault.purge(item.id)
        return outcome
    raise AssertionError(attack)


def _try_restore(vault: Vault, item_id: str, to: Path | None = None) -> str:
    try:
        vault.restore(item_id, to)
        return "restored"
    except QuarantineError as exc:
        return "refused" if "\n" not in str(exc) else "multi-line error"
    except Injected:
        return "injected"
    except Exception as exc:                     # noqa: BLE001 - an unclean outcome
        return f"crash: {type(exc).__name__}: {exc}"


RESTORE_ATTACKS = {"sub-link": "refused", "root-link": "refused", "name-dangling": "refused",
                   "name-existing": "refused", "at-write-sub": "restored",
                   "at-write-root": "restored", "at-write-fail": "refused"}
PURGE_ATTACKS = ("purge-sub-link", "purge-root-link", "purge-bin-link", "hostile-ids")


@case("2", "purge and restore: path swapped for a link", fast=400, full=10_000)
def case_purge_restore_swap(n: int, workdir: Path) -> dict:
    """Half the iterations: one attack each (a folder on the way to the original place
    swapped for a link, before or while root writes; the name taken by a link; a vault
    entry replaced by a link; hostile item ids). Half: batches of restores and purges
    while a racing process swaps the folder and the watched folder for links."""
    fig = dict(iterations=0, escapes=0, restored=0, refused=0, purged=0, unclean=0,
               unexpected=0, swaps=0, racer_died=0)
    world = make_world(workdir)
    fds = _Fds(world)
    canary = world.canary_snapshot()
    rng = random.Random(2)
    problems: list[str] = []

    def account(outcome: str, want: str | None, what: str) -> None:
        nonlocal canary
        fig["iterations"] += 1
        if outcome in ("restored", "refused", "purged"):
            fig[outcome] += 1
        else:
            fig["unclean"] += 1
            problems.append(f"{what}: {outcome}")
        if want is not None and outcome != want:
            fig["unexpected"] += 1
            problems.append(f"{what}: {outcome}, expected {want}")
        now = world.canary_snapshot()
        strays = _strays(world)
        if now != canary or strays:
            fig["escapes"] += 1
            problems.append(f"{what}: canary {diff(canary, now)}, strays {strays}")
            canary = now
        if os.listdir(world.vault.tmp):
            fig["unclean"] += 1
            problems.append(f"{what}: vault tmp leftovers")

    try:
        attacks = list(RESTORE_ATTACKS) + list(PURGE_ATTACKS)
        deterministic = n // 2
        for i in range(deterministic):
            attack = attacks[i % len(attacks)]
            if attack in RESTORE_ATTACKS:
                item, exp = _quarantined(world, fds, GIFT, _payload(i, rng))
                outcome = _restore_variant(world, fds, attack, item, exp, problems)
                account(outcome, RESTORE_ATTACKS[attack], attack)
            elif attack == "hostile-ids":
                item, exp = _quarantined(world, fds, OLD, _payload(i, rng))
                before = snapshot(workdir)
                bad = 0
                for raw in HOSTILE_IDS:
                    hostile = raw.format(id=item.id)
                    for op in (world.vault.purge, world.vault.restore):
                        try:
                            op(hostile)
                            bad += 1
                        except QuarantineError:
                            pass
                        except Exception:          # noqa: BLE001 - unclean
                            bad += 1
                after = snapshot(workdir)
                if bad or after != before:
                    problems.append(f"hostile ids: {bad} not refused, {diff(before, after)}")
                account("refused" if not bad and after == before else "unclean", None, attack)
                world.vault.purge(item.id)
            else:
                item, exp = _quarantined(world, fds, OLD, _payload(i, rng))
                swap = fds.sub_swap(world) if attack == "purge-sub-link" else \
                    fds.root_swap(world) if attack == "purge-root-link" else None
                if swap:
                    swap.do()
                else:          # a vault entry swapped for a link to a file of root's
                    b = world.vault.items / f"{item.id}.bin"
                    b.unlink()
                    b.symlink_to(world.canary / OLD)
                try:
                    world.vault.purge(item.id)
                    gone = not any(world.vault.items.glob(f"{item.id}.*"))
                    outcome = "purged" if gone else "purge left files"
                except Exception as exc:           # noqa: BLE001 - unclean
                    outcome = f"crash: {exc}"
                finally:
                    if swap:
                        swap.undo()
                account(outcome, "purged", attack)
            _clear(fds.sub)

        batch = 20
        i = deterministic
        while i < n:
            k = min(batch, n - i)
            made = []
            for j in range(k):
                name = f"gift-{i + j}.bin"
                made.append((name, *_quarantined(world, fds, name, _payload(i + j, rng))))
            racer = Racer([fds.sub_swap(world), fds.root_swap(world)], 300e-6, seed=i)
            results = []
            with racer:
                for j, (_name, item, _exp) in enumerate(made):
                    if j % 2:
                        try:
                            world.vault.purge(item.id)
                            results.append("purged")
                        except Exception as exc:   # noqa: BLE001 - unclean
                            results.append(f"crash: {exc}")
                    else:
                        results.append(_try_restore(world.vault, item.id))
            fig["swaps"] += racer.swaps
            fig["racer_died"] += int(racer.died)
            for (name, item, exp), outcome in zip(made, results, strict=True):
                here = _content_at(fds.sub, name)
                in_vault = (world.vault.items / f"{item.id}.json").exists()
                if outcome == "restored" and (sha256(here or b"") != exp.sha256 or in_vault):
                    outcome = "restored wrongly"
                elif outcome == "refused" and (here is not None or not in_vault):
                    outcome = "refused uncleanly"
                elif outcome == "purged" and in_vault:
                    outcome = "purge left files"
                account(outcome, None, "free-running")
                if in_vault:
                    world.vault.purge(item.id)
            _clear(fds.sub)
            i += k
    finally:
        world.vault.step_hook = None
        fds.close()
    fig["failures"] = fig["escapes"] + fig["unclean"] + fig["unexpected"] + fig["racer_died"]
    if problems:
        fig["first_problems"] = "; ".join(problems[:3])
    return fig


# =====================================================================================
# Case 3: restore from edited metadata
# =====================================================================================

def _metadata_edits(meta: dict, world: World) -> list[tuple[str, dict]]:
    """(what, fields to set) for each hostile edit of the item's metadata."""
    root, rel = meta["root"], meta["rel"]
    canary = str(world.canary)
    up = ["..", "..", "etc", "passwd"]
    return [
        ("rel ../../etc/passwd", {"rel": up, "original_path": os.path.join(root, *up)}),
        ("original ../../etc/passwd", {"original_path": "../../etc/passwd"}),
        ("original /etc/passwd", {"original_path": "/etc/passwd"}),
        ("all three /etc/passwd", {"root": "/etc", "rel": ["passwd"],
                                   "original_path": "/etc/passwd"}),
        ("rel absolute", {"rel": ["/etc/passwd"], "original_path": "/etc/passwd"}),
        ("root elsewhere, consistent", {"root": canary, "original_path":
                                        os.path.join(canary, *rel)}),
        ("root elsewhere, new name", {"root": canary, "rel": ["planted.sh"],
                                      "original_path": os.path.join(canary, "planted.sh")}),
        ("root with ..", {"root": root + "/../../../canary", "original_path":
                          os.path.join(root + "/../../../canary", *rel)}),
        ("root relative", {"root": "home/Downloads", "original_path":
                           os.path.join("home/Downloads", *rel)}),
        ("root NUL", {"root": root + "\0x", "original_path": os.path.join(root + "\0x", *rel)}),
        ("root newline", {"root": root + "\nx", "original_path":
                          os.path.join(root + "\nx", *rel)}),
        ("name NUL", {"rel": rel[:-1] + ["gift\0.bin"], "original_path":
                      os.path.join(root, *rel[:-1], "gift\0.bin")}),
        ("name newline", {"rel": rel[:-1] + ["gift\n.bin"], "original_path":
                          os.path.join(root, *rel[:-1], "gift\n.bin")}),
        ("name with slash", {"rel": rel[:-1] + ["../../../canary/x"], "original_path":
                             os.path.join(root, *rel[:-1], "../../../canary/x")}),
        ("original NUL", {"original_path": meta["original_path"] + "\0"}),
        ("rel empty", {"rel": [], "original_path": root}),
        ("rel a string", {"rel": "sub/gift.bin"}),
        ("rel not strings", {"rel": ["sub", 7]}),
        ("root a number", {"root": 7}),
        ("root missing", {"root": None}),
        ("uid a string", {"uid": "root"}),
        ("mode negative", {"mode": -1}),
    ]


def _random_edit(rng: random.Random, meta: dict, world: World) -> dict:
    """A random hostile location whose every validation-passing form lies inside the
    test's own folder: nothing real is ever a possible target."""
    root = meta["root"]
    roots = [root, str(world.canary), str(world.base), str(world.home), root + "/",
             "home/Downloads", root + "/../../canary", root + "\0", root + "\n",
             str(world.canary / "sub"), str(world.home) + "/./Downloads"]
    parts = ["sub", GIFT, "..", ".", "", "/etc/passwd", "a/b", "x\0.bin", "x\n.bin",
             "new.bin", "../../etc/passwd", "evil.bin", "sub.real"]
    r = rng.choice(roots)
    rel = [rng.choice(parts) for _ in range(rng.randint(0, 3))]
    original = rng.choice([os.path.join(r, *rel) if all(isinstance(p, str) for p in rel)
                           else r, "/etc/passwd", "../../etc/passwd", meta["original_path"]])
    return {"root": r, "rel": rel, "original_path": original}


def _cli_restore(world: World, item_id: str) -> tuple[int, str]:
    from daemon_support import write_config
    cfg = write_config(world.base / "cli", "enforce")
    text = cfg.read_text().replace(str(world.base / "cli" / "vault"), str(world.vault.folder))
    cfg.write_text(text)
    r = subprocess.run([sys.executable, "-m", "guard", "quarantine", "restore", item_id,
                        "--config", str(cfg)], capture_output=True, text=True, timeout=60,
                       cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    return r.returncode, r.stderr


@case("3", "restore from edited vault metadata", fast=80, full=3000, unit="variants")
def case_edited_metadata(n: int, workdir: Path) -> dict:
    """The item's JSON metadata edited in the vault (original path, rel parts, root):
    every edit from the issue's list first, then random hostile combinations; each
    restore must be refused with one line and write nothing anywhere. Three edits also
    go through `guard quarantine restore` (exit code, one-line error, no traceback)."""
    fig = dict(variants=0, refused=0, escapes=0, unclean=0, cli_checked=0)
    world = make_world(workdir / "world")
    fds = _Fds(world)
    rng = random.Random(3)
    problems: list[str] = []
    passwd = os.stat("/etc/passwd").st_mtime_ns          # read-only look, never written
    try:
        item, exp = _quarantined(world, fds, GIFT, _payload(0, rng))
        meta_path = world.vault.items / f"{item.id}.json"
        original_text = meta_path.read_text()
        meta = json.loads(original_text)
        edits = _metadata_edits(meta, world)
        for i in range(max(n, len(edits))):
            if i < len(edits):
                what, fields = edits[i]
            else:
                what, fields = "random", _random_edit(rng, meta, world)
                if all(meta.get(k) == v for k, v in fields.items()):
                    continue                             # that is the true location
            edited = {**meta, **fields}
            edited = {k: v for k, v in edited.items() if v is not None}
            meta_path.write_text(json.dumps(edited))
            before = snapshot(workdir)
            outcome = _try_restore(world.vault, item.id)
            after = snapshot(workdir)
            fig["variants"] += 1
            if outcome == "refused":
                fig["refused"] += 1
            elif outcome == "restored":
                fig["escapes"] += 1
                problems.append(f"{what}: restored to {edited.get('original_path')!r}")
            else:
                fig["unclean"] += 1
                problems.append(f"{what}: {outcome}")
            if after != before:
                fig["escapes"] += 1
                problems.append(f"{what}: wrote {diff(before, after)}")
                meta_path.write_text(original_text)
                _clear(fds.sub)
                item, exp = _quarantined(world, fds, GIFT, _payload(i, rng))
                meta_path = world.vault.items / f"{item.id}.json"
                original_text = meta_path.read_text()
                meta = json.loads(original_text)
                continue
            if i < 3:                                    # the CLI's view of the same
                code, err = _cli_restore(world, item.id)
                lines = [ln for ln in err.splitlines() if ln.strip()]
                fig["cli_checked"] += 1
                if code == 0 or "Traceback" in err or not lines or \
                        not lines[0].startswith("guard: error: ") or len(lines) > 2:
                    fig["unclean"] += 1
                    problems.append(f"{what}: CLI exit {code}: {err!r}")
        meta_path.write_text(original_text)
        if _try_restore(world.vault, item.id) != "restored" or \
                sha256(_content_at(fds.sub, GIFT) or b"") != exp.sha256:
            fig["unclean"] += 1
            problems.append("the untouched metadata no longer restores")
        if os.stat("/etc/passwd").st_mtime_ns != passwd:
            fig["escapes"] += 1
    finally:
        fds.close()
    fig["failures"] = fig["escapes"] + fig["unclean"]
    if problems:
        fig["first_problems"] = "; ".join(problems[:3])
    return fig


# =====================================================================================
# Case 4: a hard link to a root-owned canary dropped into the watched folder
# =====================================================================================

def _agent_refuses_hard_link(workdir: Path) -> tuple[bool, str]:
    """The real agent: a hard link to a root-owned canary (a disguised program, so it is
    flagged) dropped into its watched folder is refused, logged, and the canary stays."""
    import builders as b
    from daemon_support import Agent, wait_until, write_config

    base = workdir / "agent"
    base.mkdir()
    outside = base / "outside"
    outside.mkdir(mode=0o755)
    canary = outside / "Contract.pdf"
    canary.write_bytes(b.pe32())
    os.chmod(canary, 0o644)
    before = snapshot(outside)
    agent = Agent(base, write_config(base, "enforce"))
    recs: list = []
    try:
        agent.start({"XDG_CACHE_HOME": str(base / "cache")})
        link = base / "Downloads" / "Contract.pdf"
        os.link(canary, link)

        def logged():
            return [r for r in agent.records() if r["event"]["action"] == "quarantine"
                    and "other hard links" in (r.get("error") or {}).get("message", "")]
        recs = wait_until(logged, 15)
        time.sleep(0.3)
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.stop()
    why = []
    if not recs:
        why.append("no record of the refusal")
    elif recs[0]["event"].get("outcome") != "failure":
        why.append(f"logged as {recs[0]['event']}")
    if snapshot(outside) != before:
        why.append(f"canary {diff(before, snapshot(outside))}")
    if not link.exists() or os.stat(link).st_ino != os.stat(canary).st_ino:
        why.append("the link was moved")
    if [p for p in (base / "vault" / "items").iterdir()]:
        why.append("the vault holds an item")
    return not why, "; ".join(why)


@case("4", "hard link to a root-owned canary in a watched folder", fast=120, full=5000)
def case_hard_link(n: int, workdir: Path) -> dict:
    """The Vault directly, n times: hard links to root's files (and someone else's)
    dropped into the watched folder are refused; a fourth of the time the flagged file
    is swapped for such a link while the vault works. Then once with the real agent."""
    fig = dict(iterations=0, refused=0, moved=0, escapes=0, unclean=0, agent_logged=0)
    world = make_world(workdir / "world")
    fds = _Fds(world)
    canary = world.canary_snapshot()
    rng = random.Random(4)
    problems: list[str] = []
    targets = ["evil.bin", "shadow", "setuid-tool", "theirs.txt"]
    try:
        for i in range(n):
            target = world.canary / targets[i % len(targets)]
            folder_fd = fds.sub if i % 2 else fds.root
            folder = world.sub if i % 2 else world.root
            name = f"Contract-{i}.pdf"
            raced = i % 4 == 3
            if raced:                   # a real file, swapped for the link mid-move
                write_at(folder_fd, name, _payload(i, rng))
                exp = expected_for(name, dir_fd=folder_fd)

                def act(name=name, folder_fd=folder_fd, target=target):
                    os.unlink(name, dir_fd=folder_fd)
                    os.link(target, name, dst_dir_fd=folder_fd)
                world.vault.step_hook = _hook(rng.choice(BEFORE_UNLINK[:-1]), act)
            else:
                os.link(target, name, dst_dir_fd=folder_fd)
                exp = expected_for(name, dir_fd=folder_fd)
            try:
                outcome, item = _attempt_quarantine(world, folder / name, exp)
            finally:
                world.vault.step_hook = None
            fig["iterations"] += 1
            wrong = []
            if outcome == "refused":
                fig["refused"] += 1
                if not raced and "hard links" not in str(item):
                    wrong.append(f"refused for another reason: {item}")
            elif outcome == "moved":
                fig["moved"] += 1
                wrong.append("moved")
            else:
                wrong.append(outcome)
            st = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
            if (st.st_dev, st.st_ino) != (os.stat(target).st_dev, os.stat(target).st_ino):
                wrong.append("the link is not where it was dropped")
            if os.listdir(world.vault.tmp) or any(e.startswith(".guard-")
                                                  for e in os.listdir(folder_fd)):
                wrong.append("leftovers")
            now = world.canary_snapshot()
            if now != canary:
                fig["escapes"] += 1
                problems.append(f"{name}: canary {diff(canary, now)}")
                canary = now
            if wrong:
                fig["unclean"] += 1
                problems.append(f"{name}: {wrong}")
            os.unlink(name, dir_fd=folder_fd)
        if _count_items(world.vault) != (0, 0):
            fig["unclean"] += 1
            problems.append("the vault holds items")
    finally:
        fds.close()
    ok, why = _agent_refuses_hard_link(workdir)
    fig["agent_logged"] = int(ok)
    if not ok:
        problems.append(f"agent: {why}")
    fig["failures"] = fig["escapes"] + fig["unclean"] + fig["moved"] + (1 - fig["agent_logged"])
    if problems:
        fig["first_problems"] = "; ".join(problems[:3])
    return fig


# =====================================================================================
# Case 5: kill -9 at every step, during recovery too; cross-filesystem; full disk
# =====================================================================================

KILL_STEPS = ("intent", "copy", "fsync", "rename", "meta", "aside", "unlink", "commit")
RECOVER_STEPS = ("recover-unlink", "recover-commit", "recover-link", "recover-putback",
                 "recover-discard", "recover-rollback")

_CHILD = r"""
import json, os, signal, sys
from pathlib import Path
import guard.actions.quarantine as q
from guard.verdict import FileIdentity
a = json.loads(sys.argv[1])
if a["fallback"]:
    q._renameat2 = None
v = q.Vault(Path(a["vault"]))
def hook(step):
    if step == a["kill"]:
        os.kill(os.getpid(), signal.SIGKILL)
v.step_hook = hook
if a["op"] == "quarantine":
    v.quarantine(Path(a["root"]), Path(a["path"]), FileIdentity(*a["expected"][0]),
                 a["expected"][1], {})
else:
    v.recover()
"""


def _killing_hook(step: str | None):
    def hook(name: str) -> None:
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)
    return hook


def _in_child(op: str, vault_dir: Path, kill: str | None, fallback: bool, fresh: bool,
              root: Path | None = None, path: Path | None = None,
              exp: Expected | None = None, kill_after_s: float | None = None) -> int:
    """quarantine or recover in a real child process, killed at step *kill* (or after
    *kill_after_s*). *fresh*: a new interpreter instead of a fork."""
    if fresh:
        arg = {"op": op, "vault": str(vault_dir), "kill": kill, "fallback": fallback,
               "root": str(root), "path": str(path),
               "expected": [list(exp.identity), exp.sha256] if exp else None}
        r = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(arg)], cwd=REPO,
                           env={**os.environ, "PYTHONPATH": str(REPO)},
                           capture_output=True, timeout=120)
        return r.returncode

    def work() -> None:
        if fallback:
            quarantine._renameat2 = None          # put back by link + unlink
        v = Vault(vault_dir)
        v.step_hook = _killing_hook(kill)
        if op == "quarantine":
            v.quarantine(root, path, *exp.args(), {})
        else:
            v.recover()
    return run_child(work, kill_after_s)


def _unresolved(vault: Vault) -> int:
    records = vault._journal_records()
    done = {r["id"] for r in records if r.get("op") in ("commit", "rollback")}
    return sum(1 for r in records if r.get("op") == "intent" and r["id"] not in done)


def _kill_cycle(i: int, src: Path, vault_dir: Path, fig: dict, problems: list[str]) -> None:
    rng = random.Random(i)
    kind = "torn" if i % 10 == 9 else "timer" if i % 10 in (3, 7) else "step"
    fresh = i % 25 == 0 and kind == "step"
    fallback = rng.random() < (0.5 if kind == "torn" else 0.3)
    step = KILL_STEPS[(i // 1) % len(KILL_STEPS)] if kind == "step" else "aside"
    name = f"c{i}.bin"
    sizes = (1 << 20, 3 << 20) if kind == "timer" else (100, 70_000, 70_000, 2_500_000)
    path = src / name
    data = _payload(i, rng, (rng.choice(sizes),))
    path.write_bytes(data)
    os.chown(path, USER, USER)
    exp = expected_for(path)
    items = Path(vault_dir) / "items"
    before = set(os.listdir(items)) if items.exists() else set()

    status = _in_child("quarantine", vault_dir, None if kind == "timer" else step, fallback,
                       fresh, src, path, exp,
                       kill_after_s=rng.uniform(0, 0.006) if kind == "timer" else None)
    if status == -signal.SIGKILL:
        fig["killed_in_quarantine"] += 1
    elif kind != "timer" or status != 0:
        fig["child_errors"] += 1
        problems.append(f"cycle {i}: quarantine child exited {status} before step {step}")
    fig["fresh_interpreters"] += int(fresh)
    if kind == "torn":
        # The copy lost on the way (a disk that dropped it): recovery must roll back and
        # put the file back from its aside name, and may be killed while it does.
        new = [n for n in os.listdir(items) if n.endswith(".bin") and n not in before]
        for n in new:
            with open(items / n, "r+b") as fh:
                fh.truncate(len(quarantine.HEADER) + 1)
    for attempt in range(2):
        if attempt and rng.random() > 0.3:
            break
        if kind == "torn":
            kill = rng.choice(("recover-link", "recover-putback", "recover-discard", None))
        else:
            kill = rng.choice(RECOVER_STEPS + (None,)) if rng.random() < 0.7 else None
        timer = rng.uniform(0, 0.003) if kill is None and rng.random() < 0.3 else None
        status = _in_child("recover", vault_dir, kill, fallback, fresh and not attempt,
                           kill_after_s=timer)
        if status == -signal.SIGKILL:
            fig["killed_in_recovery"] += 1
        elif status != 0:
            fig["child_errors"] += 1
            problems.append(f"cycle {i}: recovery child exited {status}")
    Vault(vault_dir).recover()

    vault = Vault(vault_dir)
    now = set(os.listdir(items))
    new = now - before
    bins = {n[:-4] for n in new if n.endswith(".bin")}
    jsons = {n[:-5] for n in new if n.endswith(".json")}
    asides = [n for n in os.listdir(src) if n.startswith(".guard-")]
    leftovers = len(bins ^ jsons) + len(os.listdir(vault.tmp)) + len(asides) + \
        _unresolved(vault)
    for n in asides:                      # counted once, not again in the next cycles
        os.unlink(src / n)
    in_place = path.is_file() and not path.is_symlink()
    if in_place and sha256(path.read_bytes()) != exp.sha256:
        fig["damaged"] += 1
        problems.append(f"cycle {i}: the file in place is damaged")
    copies = [x for x in bins & jsons if _vault_ok(vault, x, exp.sha256)]
    if len(copies) != len(bins & jsons):
        fig["damaged"] += 1
        problems.append(f"cycle {i}: a damaged vault item")
    count = int(in_place) + len(copies)
    if count == 0:
        fig["lost"] += 1
        problems.append(f"cycle {i} ({kind} {step}): lost")
    elif count > 1:
        fig["duplicated"] += 1
        problems.append(f"cycle {i} ({kind} {step}): duplicated")
    if leftovers:
        fig["orphaned"] += leftovers
        problems.append(f"cycle {i} ({kind} {step}): {leftovers} orphaned")
    fig["cycles"] += 1
    fig["ended_in_vault" if copies else "ended_in_place"] += 1
    if in_place:
        path.unlink()


def _full_disk(workdir: Path, src: Path, problems: list[str]) -> int:
    """Three ways a tiny vault disk fills; returns how many ended cleanly."""
    ok = 0
    with tmpfs(workdir / "tiny", "256k") as tiny:
        vault = Vault(tiny / "vault")

        def clean(v: Vault) -> bool:
            return not os.listdir(v.tmp) and _unresolved(v) == 0 and \
                len(os.listdir(v.items)) % 2 == 0

        # 1. a file bigger than the disk: refused, in place, nothing left
        big = src / "big.bin"
        big.write_bytes(os.urandom(1 << 20))
        exp = expected_for(big)
        try:
            vault.quarantine(src, big, *exp.args(), {})
            problems.append("full disk: a 1 MB file went into a 256 kB vault")
        except QuarantineError as exc:
            vault.recover()
            msg = str(exc)
            if "No space left" in msg and "\n" not in msg and expected_for(big) == exp and \
                    os.listdir(vault.items) == [] and clean(vault):
                ok += 1
            else:
                problems.append(f"full disk (big file): {msg!r}, items "
                                f"{os.listdir(vault.items)}")
        big.unlink()

        # 2. the copy fits, the commit record does not (the journal's last page is full
        # and so is the disk): the file is in the vault, never lost.
        small = src / "small.bin"
        small.write_bytes(os.urandom(64 << 10))
        exp = expected_for(small)
        filler = tiny / "filler"

        def fill() -> None:
            with open(vault.journal_path, "ab") as fh:
                pad = -fh.tell() % 4096
                if pad:
                    fh.write(b"x" * (pad - 1) + b"\n")       # an unreadable line: skipped
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, b"\0" * 4096)
            finally:
                os.close(fd)
        vault.step_hook = _hook("meta", fill)
        item = None
        try:
            item = vault.quarantine(src, small, *exp.args(), {})
            filler.unlink()
            if not small.exists() and _vault_ok(vault, item.id, exp.sha256) and \
                    ("%s" % item.id, "completed") in vault.recover() and clean(vault):
                ok += 1
            else:
                problems.append("full disk (commit): not cleanly in the vault")
        except QuarantineError as exc:
            problems.append(f"full disk (commit): {exc}; in place: {small.exists()}")
        finally:
            vault.step_hook = None
            filler.unlink(missing_ok=True)
        small.unlink(missing_ok=True)
        if item is not None:
            vault.purge(item.id)

        # 3. a disk already full: not even the intent fits
        one = src / "one.bin"
        one.write_bytes(os.urandom(10_000))
        exp = expected_for(one)
        fill()
        try:
            vault.quarantine(src, one, *exp.args(), {})
            problems.append("full disk (intent): moved into a full vault")
        except QuarantineError as exc:
            filler.unlink()
            vault.recover()
            if "No space left" in str(exc) and expected_for(one) == exp and clean(vault) \
                    and not any(vault.items.iterdir()):
                ok += 1
            else:
                problems.append(f"full disk (intent): {exc}")
        finally:
            filler.unlink(missing_ok=True)
        one.unlink()
    return ok


def _cross_fs(xfs: Path, src: Path, problems: list[str]) -> int:
    """A vault on another filesystem: move, restore, purge across it."""
    vault = Vault(xfs / "vault-x")
    data = os.urandom(3 << 20)
    p = src / "cross.bin"
    p.write_bytes(data)
    os.chown(p, USER, USER)
    os.chmod(p, 0o604)
    exp = expected_for(p)
    item = vault.quarantine(src, p, *exp.args(), {})
    if p.exists() or not _vault_ok(vault, item.id, exp.sha256):
        problems.append("cross-fs: not moved")
        return 0
    back = vault.restore(item.id)
    st = os.stat(back)
    if back != p or p.read_bytes() != data or (st.st_uid, stat.S_IMODE(st.st_mode)) != (
            USER, 0o604) or st.st_mtime_ns != exp.identity.mtime_ns:
        problems.append("cross-fs: restore differs")
        return 0
    item = vault.quarantine(src, p, *expected_for(p).args(), {})
    vault.purge(item.id)
    if p.exists() or os.listdir(vault.items) or os.listdir(vault.tmp):
        problems.append("cross-fs: purge left files")
        return 0
    return 1


@case("5", "kill -9 at every vault step, in recovery too", fast=80, full=1000, unit="cycles")
def case_kill9(n: int, workdir: Path) -> dict:
    """Each cycle: a child process quarantines one file and is SIGKILLed at a step
    (intent ... commit; 2 in 10 cycles at a random moment instead; 1 in 10 with the copy
    then lost, so recovery must put the file back); a second child recovers and is often
    killed mid-recovery, sometimes a third; then a final recover. Then: 0 files lost,
    duplicated or orphaned. Every other batch of cycles has its vault on a tmpfs (another
    filesystem); 1 in 25 cycles uses fresh interpreters instead of forks. Then a vault
    on another filesystem, and a full vault disk three ways."""
    fig = dict(cycles=0, lost=0, duplicated=0, orphaned=0, damaged=0, child_errors=0,
               killed_in_quarantine=0, killed_in_recovery=0, ended_in_vault=0, ended_in_place=0,
               fresh_interpreters=0, cross_fs_cycles=0, full_disk_ok=0, cross_fs_ok=0)
    problems: list[str] = []
    src = workdir / "home" / "Downloads"
    src.mkdir(parents=True)
    os.chown(src, USER, USER)
    batch = 20
    with tmpfs(workdir / "xfs", "256m") as xfs:
        for start in range(0, n, batch):
            other_fs = (start // batch) % 2 == 1
            vault_dir = (xfs if other_fs else workdir) / f"vault-{start}"
            for i in range(start, min(n, start + batch)):
                _kill_cycle(i, src, vault_dir, fig, problems)
                fig["cross_fs_cycles"] += int(other_fs)
            shutil.rmtree(vault_dir)                  # keep the disks small
        fig["cross_fs_ok"] = _cross_fs(xfs, src, problems)
    fig["full_disk_ok"] = _full_disk(workdir, src, problems)
    fig["failures"] = fig["lost"] + fig["duplicated"] + fig["orphaned"] + fig["damaged"] + \
        fig["child_errors"] + (3 - fig["full_disk_ok"]) + (1 - fig["cross_fs_ok"])
    if problems:
        fig["first_problems"] = "; ".join(problems[:3])
    return fig


# =====================================================================================
# pytest: each case at its CI count, and the bugs these cases found, one by one
# =====================================================================================

def test_case_1_quarantine_swap(tmp_path):
    check(case_quarantine_swap(CASES["1"].fast, tmp_path))


def test_case_2_purge_restore_swap(tmp_path):
    check(case_purge_restore_swap(CASES["2"].fast, tmp_path))


def test_case_3_edited_metadata(tmp_path):
    check(case_edited_metadata(CASES["3"].fast, tmp_path))


def test_case_4_hard_link(tmp_path):
    check(case_hard_link(CASES["4"].fast, tmp_path))


def test_case_5_kill9(tmp_path):
    check(case_kill9(CASES["5"].fast, tmp_path))


def test_restore_refuses_a_watched_folder_swapped_for_a_link(tmp_path):
    """AVGater: ~/Downloads swapped for a link to a folder of root's; restore wrote the
    employee's file there (before the walk from "/" that follows only root's links)."""
    world = make_world(tmp_path)
    fds = _Fds(world)
    try:
        item, _ = _quarantined(world, fds, GIFT, b"MZ payload")
        canary = world.canary_snapshot()
        swap = fds.root_swap(world)
        swap.do()
        try:
            with pytest.raises(FileChanged, match="link") as err:
                world.vault.restore(item.id)
        finally:
            swap.undo()
        assert "\n" not in str(err.value)
        assert world.canary_snapshot() == canary
        assert world.vault.restore(item.id) == world.sub / GIFT
    finally:
        fds.close()


def test_restore_still_follows_links_that_only_root_could_make(tmp_path):
    """A root-owned link in a root-owned folder (like /home -> /usr/home) is followed."""
    real = tmp_path / "real"
    world = make_world(real)
    os.symlink(real, tmp_path / "alias")
    vault = world.vault
    p = tmp_path / "alias" / "home" / "Downloads" / GIFT
    fd = os.open(world.root, DIR)
    try:
        write_at(fd, GIFT, b"MZ")
    finally:
        os.close(fd)
    item = vault.quarantine(tmp_path / "alias" / "home" / "Downloads", p, *expected_for(p).args(), {})
    assert vault.restore(item.id) == p and p.read_bytes() == b"MZ"


def test_a_commit_record_that_does_not_fit_keeps_the_file(tmp_path):
    """Before: the vault copy was discarded after the source was unlinked: lost."""
    src = tmp_path / "src"
    src.mkdir()
    problems: list[str] = []
    assert _full_disk(tmp_path, src, problems) == 3, problems


def test_a_folder_swapped_in_for_the_file_gets_its_name_back(tmp_path):
    world = make_world(tmp_path)
    fds = _Fds(world)
    try:
        write_at(fds.sub, NAME, b"MZ")
        exp = expected_for(NAME, dir_fd=fds.sub)
        world.vault.step_hook = _hook("meta", _file_swap(fds, world, "folder", {}))
        with pytest.raises(FileChanged):
            world.vault.quarantine(world.root, world.sub / NAME, *exp.args(), {})
        assert _entries(fds.sub) == [NAME, NAME + ".mine"]
        assert (world.sub / NAME / "inside.txt").exists()
    finally:
        fds.close()


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "link-unlink"])
def test_recovery_finishes_a_put_back_cut_short(tmp_path, monkeypatch, renameat2):
    """Killed between link and unlink, the next recovery left the file twice (its name
    and the aside name)."""
    if not renameat2:
        monkeypatch.setattr(quarantine, "_renameat2", None)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.bin").write_bytes(b"MZ data")
    vault_dir = tmp_path / "vault"
    exp = expected_for(src / "f.bin")
    assert _in_child("quarantine", vault_dir, "aside", True, False, src, src / "f.bin",
                     exp) == -signal.SIGKILL
    (item,) = [p for p in (vault_dir / "items").iterdir() if p.suffix == ".bin"]
    item.write_bytes(quarantine.HEADER)                     # the copy is lost
    assert _in_child("recover", vault_dir, "recover-link", True, False) == -signal.SIGKILL
    assert sorted(p.name for p in src.iterdir())[1:] == ["f.bin"]   # name + aside
    Vault(vault_dir).recover()
    assert [p.name for p in src.iterdir()] == ["f.bin"]
    assert (src / "f.bin").read_bytes() == b"MZ data"
    assert not any((vault_dir / "items").iterdir())


def test_restore_refuses_metadata_that_disagrees_with_the_journal(tmp_path):
    world = make_world(tmp_path)
    fds = _Fds(world)
    try:
        item, _ = _quarantined(world, fds, GIFT, b"MZ")
        meta_path = world.vault.items / f"{item.id}.json"
        meta = json.loads(meta_path.read_text())
        planted = str(world.canary / "planted.sh")
        meta.update(root=str(world.canary), rel=["planted.sh"], original_path=planted)
        meta_path.write_text(json.dumps(meta))
        with pytest.raises(QuarantineError, match="journal; restore it with --to"):
            world.vault.restore(item.id)
        assert not os.path.exists(planted)
        other = tmp_path / "elsewhere"
        other.mkdir()
        assert world.vault.restore(item.id, to=other) == other / "planted.sh"
    finally:
        fds.close()


def test_no_errno_leaks_out_of_a_refused_quarantine(tmp_path):
    """A full vault used to surface as a bare OSError; now one QuarantineError line."""
    with tmpfs(tmp_path / "tiny", "64k") as tiny:
        src = tmp_path / "src"
        src.mkdir()
        (src / "big.bin").write_bytes(os.urandom(256 << 10))
        v = Vault(tiny / "v")
        with pytest.raises(QuarantineError, match="stays in place: No space left") as err:
            v.quarantine(src, src / "big.bin", *expected_for(src / "big.bin").args(), {})
        assert err.value.path == str(src / "big.bin")
        assert (src / "big.bin").exists()
        assert errno.ENOSPC == err.value.__cause__.errno
