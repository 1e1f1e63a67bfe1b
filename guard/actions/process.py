"""Stopping a process launch control decided to stop, and only that process.

Used by the portable monitor's path (macOS, Windows, Linux without fanotify), where a
launch is seen after it started: the process is killed, identified by pid *and* create
time, so a recycled pid is never touched. Never called for a process the guard did not
decide to stop.
"""

from __future__ import annotations

import os
import signal

import psutil

from ..events import Launch


def stop_process(launch: Launch) -> str:
    """Kill the launched process, never a recycled PID. Returns the outcome.

    Where pidfds exist (Linux 5.3+), the pidfd is opened before the identity check
    (pid and create time), so the signal reaches the process that was checked even when
    the PID is recycled right after, and the wait for its end cannot be fooled by a new
    process that got the PID. Elsewhere: suspend, re-check identity, kill.
    """
    try:
        pidfd = os.pidfd_open(launch.pid)
    except ProcessLookupError:
        return "already-gone"
    except (AttributeError, OSError):
        return _stop_by_pid(launch)
    try:
        try:
            created = psutil.Process(launch.pid).create_time()
        except psutil.NoSuchProcess:
            return "already-gone"
        except psutil.AccessDenied:
            return "access-denied"
        # Same create time now: the process held this PID since before the pidfd was
        # opened, so the pidfd is that process.
        if abs(created - launch.create_time) > 1e-3:
            return "pid-recycled"
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            return "already-gone"
        except PermissionError:
            return "access-denied"
        import select
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return "killed" if poller.poll(2000) else "kill-pending"
    finally:
        os.close(pidfd)


def _stop_by_pid(launch: Launch) -> str:
    try:
        p = psutil.Process(launch.pid)
        if abs(p.create_time() - launch.create_time) > 1e-3:
            return "pid-recycled"
        p.suspend()
        if abs(p.create_time() - launch.create_time) > 1e-3:
            p.resume()
            return "pid-recycled"
        p.kill()
        try:
            p.wait(2.0)
        except psutil.TimeoutExpired:
            return "kill-pending"
        return "killed"
    except psutil.NoSuchProcess:
        return "already-gone"
    except psutil.AccessDenied:
        return "access-denied"
