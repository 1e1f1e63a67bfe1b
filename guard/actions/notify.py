"""Tell the employee, in plain words, what was stopped and why. Best effort, never blocks.

``Notifier.notify`` only queues; a background thread delivers. Delivery per OS:
Linux notify-send (libnotify over D-Bus), macOS osascript, Windows a PowerShell toast.
``file:PATH`` writes one JSON line per notification instead (tests, kiosks, and admins
who forward notifications elsewhere). The macOS and Windows paths cannot run on this
project's Linux CI; their command lines are built by pure functions that are tested.
"""

from __future__ import annotations

import json
import os
import platform
import queue
import shutil
import subprocess
import threading
import time
from typing import Callable
from pathlib import Path

_DELIVERY_TIMEOUT_S = 5.0


def desktop_command(title: str, body: str, system: str | None = None) -> list[str] | None:
    """The argv that shows a notification on this OS, or None if none is available.

    Arguments are passed as argv items (never through a shell); AppleScript and
    PowerShell strings are escaped for their own quoting rules.
    """
    system = system or platform.system()
    if system == "Linux":
        exe = shutil.which("notify-send")
        return [exe, "--app-name=guard", "--urgency=critical", title, body] if exe else None
    if system == "Darwin":
        def q(s: str) -> str:
            return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return ["osascript", "-e", f"display notification {q(body)} with title {q(title)}"]
    if system == "Windows":
        def ps(s: str) -> str:
            return "'" + s.replace("'", "''") + "'"
        script = (
            "[Windows.UI.Notifications.ToastNotificationManager, Windows.UI.Notifications, "
            "ContentType=WindowsRuntime] > $null; "
            "$t = [Windows.UI.Notifications.ToastNotificationManager]::GetTemplateContent("
            "[Windows.UI.Notifications.ToastTemplateType]::ToastText02); "
            f"$t.GetElementsByTagName('text')[0].AppendChild($t.CreateTextNode({ps(title)})) "
            "> $null; "
            f"$t.GetElementsByTagName('text')[1].AppendChild($t.CreateTextNode({ps(body)})) "
            "> $null; "
            "[Windows.UI.Notifications.ToastNotificationManager]::CreateToastNotifier('guard')"
            ".Show([Windows.UI.Notifications.ToastNotification]::new($t))")
        return ["powershell", "-NoProfile", "-NonInteractive", "-Command", script]
    return None


class Notifier:
    """Queue-backed; ``notify`` returns at once. ``close`` drains briefly and stops."""

    def __init__(self, target: str = "auto", max_pending: int = 100,
                 on_failure: Callable[[str], None] | None = None):
        self.target = target
        self.on_failure = on_failure        # told why a notification was not delivered
        self._q: queue.Queue[tuple[str, str, dict] | None] = queue.Queue(max_pending)
        self.delivered = 0
        self.dropped = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="guard-notify", daemon=True)
        self._thread.start()

    def notify(self, title: str, body: str, **extra: object) -> None:
        if self.target == "none":
            return
        try:
            self._q.put_nowait((title, body, dict(extra)))
        except queue.Full:
            self.dropped += 1
            if self.on_failure is not None:
                self.on_failure(f"notification dropped ({title!r}): {self._q.maxsize} "
                                "already waiting")

    def close(self, timeout_s: float = 2.0) -> None:
        try:
            self._q.put(None, timeout=timeout_s)
        except queue.Full:
            pass
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            try:
                self._deliver(*item)
                self.delivered += 1
            except Exception as exc:  # noqa: BLE001 - never takes the agent down; reported
                self.failed += 1
                if self.on_failure is not None:
                    self.on_failure(f"notification not delivered ({item[0]!r}): "
                                    f"{type(exc).__name__}: {exc}")

    def _deliver(self, title: str, body: str, extra: dict) -> None:
        if self.target.startswith("file:"):
            path = Path(self.target[5:])
            path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps({"time": time.time(), "title": title, "body": body, **extra},
                              ensure_ascii=True)
            with open(path, "a", encoding="ascii") as fh:
                fh.write(line + "\n")
            return
        argv = desktop_command(title, body)
        if argv is None:
            raise RuntimeError("no desktop notification tool")
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=_DELIVERY_TIMEOUT_S, check=False,
                       env={**os.environ, "LC_ALL": "C.UTF-8"})


def quarantine_message(name: str, summary: str, meeting: bool) -> tuple[str, str]:
    """Title and body for a stopped file: what, why, and what to do next."""
    title = "guard stopped a dangerous file"
    body = f"{summary} It was moved to quarantine, so it cannot run."
    if meeting:
        body += (" It arrived during a video call: before asking for it back, confirm "
                 "with the sender through a separate channel you already know (a phone "
                 "number you have, not one from the call or chat).")
    else:
        body += " If you expected this file, ask your security team to check and release it."
    return title, body

