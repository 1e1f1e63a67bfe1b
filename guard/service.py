"""The agent as a Windows service (pywin32): ``guard service install|remove|start|stop``.

An entry point like ``guard.cli``: it runs the daemon, so it lives beside it, not in
``guard.platform`` (no room imports the daemon).

Not tested on the project's CI, which has no Windows: the tests check only that other
systems refuse the command with a clear message. pywin32 is imported here alone, on
Windows, when a service command runs; it is not a dependency elsewhere.
"""

from __future__ import annotations

import sys
from typing import Sequence

SERVICE_NAME = "guard"
DISPLAY_NAME = "guard agent"
DESCRIPTION = ("Watches download and chat folders, quarantines executables disguised as "
               "documents and stops programs that are not on the allowlist.")
ACTIONS = ("install", "remove", "start", "stop", "restart", "debug")


class ServiceUnavailable(RuntimeError):
    """The service commands cannot run here (not Windows, or pywin32 missing)."""


def _service_class():
    try:
        import servicemanager
        import win32event
        import win32service
        import win32serviceutil
    except ImportError as exc:
        raise ServiceUnavailable("the Windows service needs pywin32: "
                                 "pip install pywin32") from exc

    class GuardService(win32serviceutil.ServiceFramework):
        _svc_name_ = SERVICE_NAME
        _svc_display_name_ = DISPLAY_NAME
        _svc_description_ = DESCRIPTION

        def __init__(self, args):
            super().__init__(args)
            self._stop_event = win32event.CreateEvent(None, 0, 0, None)

        def SvcStop(self):  # noqa: N802 - pywin32's name
            self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING)
            win32event.SetEvent(self._stop_event)

        def SvcDoRun(self):  # noqa: N802 - pywin32's name
            from .config import load_config
            from .daemon import Daemon
            servicemanager.LogInfoMsg("guard agent starting")
            daemon = Daemon(load_config(None), None)      # takes the instance lock
            daemon.start()
            self.ReportServiceStatus(win32service.SERVICE_RUNNING)
            win32event.WaitForSingleObject(self._stop_event, win32event.INFINITE)
            daemon.stop()
            servicemanager.LogInfoMsg("guard agent stopped")

    return GuardService, win32serviceutil


def handle(action: str, argv0: str = "guard", extra: Sequence[str] = ()) -> int:
    """Run one service command the way pywin32's HandleCommandLine does."""
    if sys.platform != "win32":
        raise ServiceUnavailable("`guard service` manages the Windows service; on Linux use "
                                 "the systemd unit (packaging/systemd), on macOS the launchd "
                                 "plist (packaging/macos)")
    if action not in ACTIONS:
        raise ServiceUnavailable(f"unknown service action {action!r}: {', '.join(ACTIONS)}")
    cls, util = _service_class()
    util.HandleCommandLine(cls, argv=[argv0, action, *extra])
    return 0
