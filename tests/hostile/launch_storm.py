"""Exec storm for the hostile launch cases: many concurrent execs, each one timed, none
waited for without a limit.

Runs in its own process (started by the tests with a timeout, in its own session so that
the test can kill it and every child with one killpg): it forks a child per exec and the
child calls execv at once, so a hung execve only ever blocks that child. Children are
watched through pidfds; one still running after ``hang_s`` is killed (fanotify's wait
for an answer is killable) and counted as hung.

    launch_storm.py '<spec as JSON>'

spec: {"programs": [{"path": ..., "argv": [...], "touch": bool}, ...], "count": N,
       "concurrency": K, "hang_s": S}
``touch`` gives the program a new mtime before each exec of it, so that its launch is
never answered from the agent's cache (cache keys carry mtime and ctime).

Prints one JSON object: {"execs": [[program index, exit code, latency ms, pid,
monotonic end], ...], "hung": [pids]}. Exit code 126: the exec was refused (EACCES or
EPERM), 127: the program was gone (ENOENT, e.g. quarantined), -9: killed as hung.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import sys
import time


def _child(path: str, argv: list[str]) -> None:
    try:
        os.execv(path, argv)
    except OSError as exc:
        code = {errno.EACCES: 126, errno.EPERM: 126, errno.ENOENT: 127}.get(exc.errno, 125)
        os._exit(code)
    os._exit(125)


def storm(spec: dict) -> dict:
    programs = spec["programs"]
    count, concurrency, hang_s = spec["count"], spec["concurrency"], spec["hang_s"]
    poller = select.poll()
    inflight: dict[int, tuple[int, int, float]] = {}      # pidfd -> (pid, program, t0)
    execs: list[list] = []
    hung: list[int] = []
    started = 0
    stamp = time.time_ns()
    while started < count or inflight:
        while started < count and len(inflight) < concurrency:
            k = started % len(programs)
            prog = programs[k]
            if prog.get("touch"):
                stamp += 1000
                try:
                    os.utime(prog["path"], ns=(stamp, stamp))
                except OSError:
                    pass               # gone (quarantined): the exec says so
            t0 = time.monotonic()
            pid = os.fork()
            if pid == 0:
                _child(prog["path"], prog["argv"])
            pidfd = os.pidfd_open(pid)
            poller.register(pidfd, select.POLLIN)
            inflight[pidfd] = (pid, k, t0)
            started += 1
        ready = poller.poll(20)
        now = time.monotonic()
        for pidfd, _ in ready:
            pid, k, t0 = inflight.pop(pidfd)
            poller.unregister(pidfd)
            os.close(pidfd)
            _, status = os.waitpid(pid, 0)
            execs.append([k, os.waitstatus_to_exitcode(status), round((now - t0) * 1000, 3),
                          pid, now])
        for pidfd, (pid, k, t0) in list(inflight.items()):
            if now - t0 > hang_s:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                os.waitpid(pid, 0)
                inflight.pop(pidfd)
                poller.unregister(pidfd)
                os.close(pidfd)
                hung.append(pid)
                execs.append([k, -9, round((now - t0) * 1000, 3), pid, now])
    return {"execs": execs, "hung": hung}


if __name__ == "__main__":
    print(json.dumps(storm(json.loads(sys.argv[1]))))
