"""Service-manager integration per OS: systemd (Linux), launchd (macOS), the Windows
service control manager. The agent itself is the same everywhere (`guard run`)."""
