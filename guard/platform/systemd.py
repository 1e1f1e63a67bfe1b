"""systemd's notify protocol (sd_notify), without libsystemd.

With ``Type=notify`` the agent says READY=1 once it watches its folders, and with
``WatchdogSec=`` it sends WATCHDOG=1 while it is healthy: systemd restarts an agent that
stops sending (hung). Outside systemd (no ``NOTIFY_SOCKET``) every call is a cheap no-op.
"""

from __future__ import annotations

import os
import socket


def _socket_address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if not addr or not (addr.startswith("/") or addr.startswith("@")):
        return None
    return "\0" + addr[1:] if addr.startswith("@") else addr    # '@': abstract namespace


def notify(*states: str) -> bool:
    """Send ``KEY=VALUE`` lines (``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ...).
    Returns whether a service manager was there to hear it. Never raises."""
    addr = _socket_address()
    if addr is None:
        return False
    payload = "\n".join(s.replace("\n", " ") for s in states).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(payload)
        return True
    except OSError:
        return False


def watchdog_interval_s() -> float | None:
    """How often systemd wants WATCHDOG=1 (half its WatchdogSec), or None when it does
    not watch this process."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6 / 2
