"""Parsers in worker processes, each scan under a budget of CPU time, memory and wall time.

libmagic, pefile, olefile/olevba, the archive readers and libyara all read what an
attacker wrote, and the agent runs as root. A bug in any of them must cost one file's
verdict, never the agent. ``IsolatedScanner`` keeps the file handling in the agent
(open without following links, read, hash, the identity checks: ``Scanner._gather``) and
hands the content to a worker process, which runs ``Scanner._inspect`` on it (type, PE,
shortcut, macros, PDF, containers, YARA) and sends the facts back. The verdict is judged
in the agent, as before.

Each scan in a worker runs under:

- **CPU**: RLIMIT_CPU set to the CPU time used so far plus ``cpu_s`` (SIGXCPU ends it);
- **memory**: RLIMIT_AS set to the worker's size now (the content included) plus
  ``memory_mb``: Python raises MemoryError, C code gets NULL from malloc;
- **wall time**: the agent waits ``wall_s`` for the answer, then kills the worker.

A file that blows one of them gets a ``limit-exceeded`` reason naming it; a worker that
dies any other way (a signal: a parser's memory bug) gets a ``malformed`` reason; neither
is ever clean. The next file gets a new worker.

The worker is started from the agent's own interpreter (``python -m guard.sandbox``), loads
the rules the agent compiled (never recompiles), imports every parser, then drops root (to
``nobody``), sets no_new_privs, and writes no core file; it exits when the agent's end of its socket closes.
It gets content through a memfd opened read-only, never a user's path. Its answers are
unpickled with only guard's fact classes allowed and are type-checked, so a worker taken
over through a parser cannot run code in the agent through what it sends back.

Workers start on demand (about a quarter of a second), one per concurrent scan, and exit
after ``idle_s`` without work, so an idle agent holds no parser memory.
"""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import io
import math
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from .analyze.yara_scan import RuleHit, RuleSet
from .identify.containers import ContainerFacts
from .identify.office import MacroFacts
from .identify.pdf import PdfFacts
from .identify.pe import PeFacts
from .identify.sample import MemberHit, Sample
from .identify.shortcut import ShortcutFacts
from .scanner import INTERNAL_ERROR, ScanOptions, Scanner
from .verdict import FileType

_HEADER = struct.Struct("<Q")
_MAX_ANSWER = 64 << 20           # a worker's answer is facts, never content
_START_TIMEOUT_S = 60.0          # a cold start on a loaded 2-core machine
_UNPRIVILEGED_USER = "nobody"
_MEMFD_KEEP = 16 << 20           # content pages a worker's memfd keeps between scans


@dataclass(frozen=True)
class Budget:
    """What one scan in a worker may use (see the module's docstring)."""
    cpu_s: float = 30.0
    memory_mb: float = 1024.0
    wall_s: float = 60.0
    idle_s: float = 60.0


class WorkerFailed(Exception):
    """The worker could not be started (START), went over the CPU or wall-time budget
    (BUDGET), or died or broke (DIED); the message is for the record."""
    START, BUDGET, DIED = "start", "budget", "died"

    def __init__(self, why: str, kind: str = DIED):
        super().__init__(why)
        self.kind = kind


# --- framing: a length, a pickle, and file descriptors on the first byte ------------------
def _send(sock: socket.socket, payload: bytes, fds: tuple[int, ...] = ()) -> None:
    data = _HEADER.pack(len(payload)) + payload
    sent = socket.send_fds(sock, [data], list(fds)) if fds else sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def _recv(sock: socket.socket, limit: int, deadline: float | None = None
          ) -> tuple[bytes, list[int]] | None:
    """(payload, fds), or None at end of stream. socket.timeout past *deadline*."""
    fds: list[int] = []

    def wait() -> None:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no answer in time")
            sock.settimeout(left)

    head = b""
    while len(head) < _HEADER.size:
        wait()
        chunk, got, _flags, _addr = socket.recv_fds(sock, _HEADER.size - len(head), 4)
        fds.extend(got)
        if not chunk:
            for fd in fds:
                os.close(fd)
            return None
        head += chunk
    size, = _HEADER.unpack(head)
    if size > limit:
        raise ValueError(f"a message of {size} bytes (limit {limit})")
    buf = bytearray(size)
    view, got_bytes = memoryview(buf), 0
    while got_bytes < size:
        wait()
        n = sock.recv_into(view[got_bytes:])
        if not n:
            for fd in fds:
                os.close(fd)
            return None
        got_bytes += n
    return bytes(buf), fds


# --- what a worker may send back -----------------------------------------------------------
_FACTS: dict[str, tuple[type, ...]] = {
    "type": (FileType, type(None)), "pe": (PeFacts, type(None)),
    "shortcut": (ShortcutFacts, type(None)), "macros": (MacroFacts, type(None)),
    "pdf": (PdfFacts, type(None)), "container": (ContainerFacts, type(None)),
    "rule_hits": (list,), "member_hits": (list,), "malformed": (list,),
    "limits_exceeded": (list,),
}
_LIST_ITEMS = {"rule_hits": RuleHit, "member_hits": MemberHit, "malformed": str,
               "limits_exceeded": str}
_SAFE_BUILTINS = {"set", "frozenset", "bytearray", "complex", "range", "slice"}


class _FactsUnpickler(pickle.Unpickler):
    """Only guard's dataclasses and enums, and a few plain builtins: no functions, no
    modules, no dotted names (which pickle would resolve attribute by attribute)."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name == "getattr":
            return _enum_member              # how some Pythons pickle an enum member
        if module == "builtins" and name in _SAFE_BUILTINS:
            return super().find_class(module, name)
        if (module == "guard" or module.startswith("guard.")) and "." not in name:
            obj = super().find_class(module, name)
            if isinstance(obj, type) and (dataclasses.is_dataclass(obj)
                                          or issubclass(obj, enum.Enum)):
                return obj
        raise pickle.UnpicklingError(f"a worker's answer may not name {module}.{name}")


def _enum_member(cls: Any, name: Any) -> enum.Enum:
    """getattr as an answer may use it: a member of one of guard's enums, nothing else."""
    if not (isinstance(cls, type) and issubclass(cls, enum.Enum) and isinstance(name, str)
            and name in cls.__members__):
        raise pickle.UnpicklingError("a worker's answer may use getattr only for an enum member")
    return cls.__members__[name]


def _facts_of(s: Sample) -> dict[str, Any]:
    facts = {k: getattr(s, k) for k in _FACTS}
    c = s.container
    if c is not None and any(m.sample for m in c.members):
        # A member's content is for YARA, which has run: say only that it had some.
        facts["container"] = dataclasses.replace(c, members=[
            dataclasses.replace(m, sample=b"\0" if m.sample else b"") for m in c.members])
    return facts


def _check_facts(facts: Any) -> dict[str, Any]:
    if not isinstance(facts, dict) or set(facts) != set(_FACTS):
        raise ValueError("the worker's answer is not a set of facts")
    for key, kinds in _FACTS.items():
        value = facts[key]
        if not isinstance(value, kinds):
            raise ValueError(f"the worker's {key} is a {type(value).__name__}")
        item = _LIST_ITEMS.get(key)
        if item is not None and not all(isinstance(v, item) for v in value):
            raise ValueError(f"the worker's {key} holds something else")
    return facts


# --- the agent's side --------------------------------------------------------------------------
class _Worker:
    """One worker process and the agent's end of its socket."""

    def __init__(self, setup: bytes):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock = ours
        self._memfd: int | None = None
        self._memfd_size = 0
        self.done = False                 # closed or killed: never handed out again
        self.last_used = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "guard.sandbox", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, cwd="/")
        except OSError as exc:
            ours.close()
            raise WorkerFailed(f"the parser process could not be started: {exc}",
                               WorkerFailed.START) from exc
        finally:
            theirs.close()
        try:
            _send(ours, setup)
            answer = _recv(ours, 1 << 16, time.monotonic() + _START_TIMEOUT_S)
            if answer is None:
                raise WorkerFailed(f"the parser process ended while starting "
                                   f"({self._ended()[0]})")
            self.info = pickle.loads(answer[0])       # noqa: S301 - before it took input
        except (OSError, ValueError, pickle.UnpicklingError) as exc:
            self.kill()
            raise WorkerFailed(f"the parser process did not start: {exc}",
                               WorkerFailed.START) from exc
        except WorkerFailed:
            self.kill()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def inspect(self, s: Sample, data: bytes, tail: bytes, uid: int, budget: Budget
                ) -> tuple[str, Any]:
        """("ok", facts) | ("raised", text); WorkerFailed when the worker died or missed
        the wall-time budget (it is then dead)."""
        request = pickle.dumps(("inspect", s, tail, uid, len(data), budget.cpu_s,
                                budget.memory_mb), protocol=pickle.HIGHEST_PROTOCOL)
        fd = self._content_fd(data)
        try:
            if fd is None:
                _send(self.sock, request + data)
            else:
                _send(self.sock, request, (fd,))
        except OSError as exc:
            self.kill()
            raise WorkerFailed(f"the parser process could not be reached "
                               f"({self._ended()[0]})") from exc
        finally:
            if fd is not None:
                os.close(fd)
        try:
            answer = _recv(self.sock, _MAX_ANSWER, time.monotonic() + budget.wall_s)
        except socket.timeout:
            self.kill()
            raise WorkerFailed(f"wall time: no answer within {budget.wall_s:g} s; the parser "
                               f"process was stopped", WorkerFailed.BUDGET) from None
        except (OSError, ValueError) as exc:
            self.kill()
            raise WorkerFailed(f"the parser process failed: {exc}") from exc
        if answer is None:
            raise WorkerFailed(*self._ended())
        for extra in answer[1]:
            os.close(extra)
        try:
            kind, value, last = _FactsUnpickler(io.BytesIO(answer[0])).load()
            if kind == "ok":
                value = _check_facts(value)
            elif kind != "raised" or not isinstance(value, str):
                raise ValueError(f"an answer of kind {kind!r}")
        except Exception as exc:  # noqa: BLE001 - anything a broken worker could send
            self.kill()
            raise WorkerFailed(f"the parser process sent a bad answer: "
                               f"{type(exc).__name__}: {exc}"[:300]) from None
        if last is True:
            self.close()                # it exits after MemoryError: start clean
        self.last_used = time.monotonic()
        return kind, value

    def _ended(self) -> tuple[str, str]:
        """Why the worker ended, once it has (waits a moment for the exit status), and the
        WorkerFailed kind that is."""
        try:
            rc = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            return "the parser process stopped answering", WorkerFailed.DIED
        if rc < 0:
            sig = -rc
            if sig == signal.SIGXCPU:
                return ("CPU time: over the budget; the parser process was stopped",
                        WorkerFailed.BUDGET)
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = f"signal {sig}"
            return f"the parser process was ended by {name}", WorkerFailed.DIED
        return f"the parser process exited with status {rc}", WorkerFailed.DIED

    def kill(self) -> None:
        self.done = True
        self._drop_memfd()
        if self.proc.poll() is None:
            self.proc.kill()              # our own child, not yet reaped: its pid is ours
        self.proc.wait()
        self.sock.close()

    def close(self) -> None:
        self.done = True
        self._drop_memfd()
        self.sock.close()                 # the worker sees the end of its input and exits
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def _content_fd(self, data: bytes) -> int | None:
        """A read-only descriptor of this worker's memfd, now holding *data* (Linux), or
        None: then the content goes on the socket. The memfd is kept from scan to scan:
        writing into pages it already has costs a third of faulting in new ones (10 MB:
        2.5 against 7.8 ms here)."""
        if not hasattr(os, "memfd_create"):
            return None
        try:
            if self._memfd is None:
                self._memfd = os.memfd_create("guard-scan", os.MFD_CLOEXEC)
            view, done = memoryview(data), 0
            while done < len(data):
                done += os.pwrite(self._memfd, view[done:], done)
            if self._memfd_size > max(len(data), _MEMFD_KEEP):
                os.ftruncate(self._memfd, len(data))      # a big file's pages go back
                self._memfd_size = len(data)
            else:
                self._memfd_size = max(self._memfd_size, len(data))
            return os.open(f"/proc/self/fd/{self._memfd}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None

    def _drop_memfd(self) -> None:
        if self._memfd is not None:
            os.close(self._memfd)
            self._memfd = None


class IsolatedScanner(Scanner):
    """A Scanner whose parsers run in worker processes under *budget*. Safe to call from
    several threads at once (each takes a worker of its own). ``close()`` stops them."""

    def __init__(self, rules: RuleSet | None = None, options: ScanOptions | None = None,
                 budget: Budget | None = None):
        super().__init__(rules, options)
        self.budget = budget or Budget()
        self._setup = _setup_message(rules, self.options)
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)   # a worker went idle, or a start ended
        self._starting = False           # a worker is being started in the background
        self._start_failed: WorkerFailed | None = None   # the last start's, for one scan
        self._closed = False
        self.started = 0                 # workers started, for status and tests
        self.failures = 0                # scans a worker failed (crash, budget)
        self.unavailable = ""            # why no worker could start, when none could
        self.worker_user = ""            # whom the last worker started runs as

    @contextmanager
    def _worker(self) -> Iterator[_Worker]:
        """An idle worker, else the first to become free: one that finishes its scan or
        one started now in the background, whichever comes first (a start takes about
        0.25 s, a scan a few ms). WorkerFailed when none can start."""
        w = None
        deadline = time.monotonic() + _START_TIMEOUT_S
        with self._lock:
            while w is None:
                while self._idle and w is None:
                    w = self._idle.pop()
                    if not w.alive:       # ended while idle (killed from outside)
                        w.kill()
                        w = None
                if w is not None:
                    break
                if self._closed:
                    raise WorkerFailed("the parser process could not be started: the "
                                       "scanner is closed", WorkerFailed.START)
                if not self._starting:
                    if self._start_failed is not None:
                        failed, self._start_failed = self._start_failed, None
                        raise failed
                    self._start_in_background()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WorkerFailed("the parser process did not start in time",
                                       WorkerFailed.START)
                self._ready.wait(left)
            self._busy.add(w)
        try:
            yield w
        finally:
            with self._lock:
                self._busy.discard(w)
                keep = w.alive and not w.done and not self._closed
                if keep:
                    self._idle.append(w)
                    self._ready.notify()
            if not keep:
                w.close()

    def _start_in_background(self) -> None:
        """With the lock held: start one worker on a thread; it joins the idle ones."""
        self._starting = True

        def run() -> None:
            w, failed = None, None
            try:
                w = _Worker(self._setup)
            except WorkerFailed as exc:
                failed = exc
            with self._lock:
                self._starting = False
                keep = w is not None and not self._closed
                if w is not None:
                    self.started += 1
                    self.worker_user = str(w.info.get("user", "?"))
                else:
                    self._start_failed = failed
                    self.unavailable = str(failed)
                if keep:
                    self._idle.append(w)
                self._ready.notify_all()
            if w is not None and not keep:
                w.close()
        threading.Thread(target=run, name="guard-parser-start", daemon=True).start()

    def _inspect(self, s: Sample, data: bytes, tail: bytes, st: os.stat_result) -> None:
        try:
            with self._worker() as w:
                kind, value = w.inspect(s, data, tail, st.st_uid, self.budget)
        except WorkerFailed as exc:
            with self._lock:
                self.failures += 1
            why = str(exc)
            if exc.kind == WorkerFailed.BUDGET:
                s.limits_exceeded.append(f"parser: {why}")
            elif exc.kind == WorkerFailed.START:
                self.unavailable = why
                super()._inspect(s, data, tail, st)   # better an in-process scan than none
            else:
                s.malformed.append(f"parser: {why} while reading this file")
            return
        self.unavailable = ""
        if kind == "ok":
            for key, val in value.items():
                setattr(s, key, val)
        else:
            s.malformed.append(f"{INTERNAL_ERROR}: {value}"[:300])

    def prestart(self) -> None:
        """Start one worker now (in the background), so that the first file after the
        agent starts does not wait for it. It exits after idle_s like any other."""
        with self._lock:
            if not self._starting and not self._idle:
                self._start_in_background()

    def wait_prestarted(self, timeout_s: float) -> bool:
        """Wait until no worker is starting (the one prestart() began is up, or failed);
        False on timeout."""
        with self._lock:
            return self._ready.wait_for(lambda: not self._starting, timeout_s)

    def reap_idle(self, now: float | None = None) -> int:
        """Stop workers idle for longer than the budget's idle_s; how many were stopped."""
        now = time.monotonic() if now is None else now
        with self._lock:
            old = [w for w in self._idle if now - w.last_used >= self.budget.idle_s]
            self._idle = [w for w in self._idle if w not in old]
        for w in old:
            w.close()
        return len(old)

    def worker_pids(self, busy: bool = False) -> list[int]:
        """Pids of the idle workers, or of those scanning now."""
        with self._lock:
            return [w.pid for w in (self._busy if busy else self._idle)]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for w in idle:
            w.close()


def _setup_message(rules: RuleSet | None, options: ScanOptions) -> bytes:
    blob = b""
    if rules is not None and rules._rules is not None:  # noqa: SLF001 - same package
        buf = io.BytesIO()
        rules._rules.save(file=buf)                      # noqa: SLF001
        blob = buf.getvalue()
    meta = None if rules is None else (rules.files, rules.fingerprint, rules.needs_md5)
    return pickle.dumps((options, meta, blob), protocol=pickle.HIGHEST_PROTOCOL)


# --- the worker's side ---------------------------------------------------------------------------
class _Stat:
    __slots__ = ("st_uid",)

    def __init__(self, uid: int):
        self.st_uid = uid


def _harden() -> str:
    """Drop what a parser exploit could use; returns the user the worker now runs as."""
    import resource
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    user = str(os.getuid())
    if os.getuid() == 0 and not _install_readable_by_all():
        user = "root (the Python install is not readable by other users)"
    elif os.getuid() == 0:
        import pwd
        try:
            pw = pwd.getpwnam(_UNPRIVILEGED_USER)
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            user = _UNPRIVILEGED_USER
        except (KeyError, OSError):
            user = "root (no unprivileged user to drop to)"
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(38, 1, 0, 0, 0)                   # PR_SET_NO_NEW_PRIVS
    # No PDEATHSIG: it fires when the agent's *thread* that started the worker ends. When
    # the agent ends, the worker reads the end of its input; one still parsing is bounded
    # by its CPU budget.
    return user


def _install_readable_by_all() -> bool:
    """Whether an unprivileged user can import from this interpreter: parsers import
    modules lazily (an encoding named in a file, a decompressor), so a worker that drops
    root under a private install (a pyenv in /root) would fail on them."""
    import encodings
    import stat as st

    import oletools
    import yara
    dirs = {os.path.dirname(os.__file__), os.path.dirname(encodings.__file__),
            os.path.dirname(os.path.dirname(__file__)), os.path.dirname(oletools.__file__),
            os.path.dirname(yara.__file__ or "")}
    for d in dirs:
        path = os.path.realpath(d)
        while True:
            try:
                mode = os.stat(path).st_mode
            except OSError:
                return False
            if not mode & st.S_IXOTH or (path == os.path.realpath(d) and not mode & st.S_IROTH):
                return False
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
    return True


def _vm_size() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _set_budget(budget_cpu_s: float, memory_bytes: int) -> None:
    import resource
    ru = resource.getrusage(resource.RUSAGE_SELF)
    _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = math.ceil(ru.ru_utime + ru.ru_stime + budget_cpu_s)
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY
                                             else min(soft, hard), hard))
    size = _vm_size()
    if size is not None:
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        want = size + memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (want if hard == resource.RLIM_INFINITY
                                                else min(want, hard), hard))


def _memory_error_in(s: Sample) -> str:
    texts = list(s.malformed) + list(s.limits_exceeded)
    if s.macros is not None and s.macros.error:
        texts.append(s.macros.error)
    if s.container is not None:
        texts.extend(s.container.malformed)
    return next((t for t in texts if "MemoryError" in t), "")


def _keep_heap() -> None:
    """Serve content-sized buffers (up to glibc's 32 MiB cap) from the heap and keep it:
    a new buffer then lands on pages faulted in by an earlier scan (reading 10 MB into
    fresh pages took 12-14 ms here, into kept ones 3). The worker gives its memory back by
    exiting when idle."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)          # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)         # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass                                # not glibc


def _lift_memory_limit() -> None:
    import resource
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))


def _read_content(fd: int, size: int) -> bytes:
    parts, done = [], 0
    while done < size:
        chunk = os.pread(fd, size - done, done)
        if not chunk:
            break
        parts.append(chunk)
        done += len(chunk)
    return b"".join(parts) if len(parts) != 1 else parts[0]


def _warm() -> None:
    """Import every parser and load libmagic before dropping privileges: afterwards the
    worker may not be able to read the agent's install."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import olefile  # noqa: F401
        from oletools import olevba  # noqa: F401
    from .identify import containers, filetype, pdf, pe, shortcut  # noqa: F401
    filetype.identify(b"MZ" + bytes(126), "pdf", b"")


def worker_main(fd: int) -> int:
    sock = socket.socket(fileno=fd)
    first = _recv(sock, 1 << 30)
    if first is None:
        return 0
    options, meta, blob = pickle.loads(first[0])      # noqa: S301 - from the agent
    rules = None
    if meta is not None:
        import yara
        compiled = yara.load(file=io.BytesIO(blob)) if blob else None
        rules = RuleSet(compiled, meta[0], (), meta[1], meta[2])
    scanner = Scanner(rules, options)
    budget_cpu_s, memory_bytes = 30.0, 1 << 30
    _keep_heap()
    _warm()
    user = _harden()
    _send(sock, pickle.dumps({"pid": os.getpid(), "user": user}))
    while True:
        msg = _recv(sock, 1 << 31)
        if msg is None:
            return 0
        payload, fds = msg
        unpickler = pickle.Unpickler(io.BytesIO(payload))
        _kind, s, tail, uid, size, *budget = unpickler.load()   # noqa: S301 - the agent's
        if budget:
            budget_cpu_s, memory_bytes = budget[0], int(budget[1] * 1024 * 1024)
        _lift_memory_limit()              # the last scan's limit was for its own content
        try:
            if fds:
                data = _read_content(fds[0], size)
            else:
                data = payload[len(payload) - size:]
        finally:
            for extra in fds:
                os.close(extra)
        del payload, unpickler
        out_of_memory = ""
        answer: tuple[str, Any, bool] | None = None
        try:
            _set_budget(budget_cpu_s, memory_bytes)
            scanner._inspect(s, data, tail, _Stat(uid))   # noqa: SLF001 - same package
        except MemoryError as exc:
            out_of_memory = f"{type(exc).__name__} {exc}".strip()
        except Exception as exc:  # noqa: BLE001 - a parser's bug, reported as such
            answer = ("raised", f"{type(exc).__name__}: {exc}"[:300], False)
        else:
            # Adapters turn a parser's exceptions into "malformed" text; MemoryError among
            # them is this budget, not damage.
            out_of_memory = _memory_error_in(s)
        del data
        _lift_memory_limit()                          # room to build the answer
        if answer is None:
            if out_of_memory:
                s.limits_exceeded.append(
                    f"parser: memory: over the {memory_bytes / (1 << 20):g} MB budget "
                    f"({out_of_memory[:150]})")
            answer = ("ok", _facts_of(s), bool(out_of_memory))
        try:
            out = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - facts that do not pickle
            out = pickle.dumps(("raised", f"unsendable facts: {type(exc).__name__}: {exc}"[:300],
                                False))
        _send(sock, out)
        if out_of_memory:
            return 0                  # after MemoryError in C code, start clean


if __name__ == "__main__":
    sys.exit(worker_main(int(sys.argv[1])))
