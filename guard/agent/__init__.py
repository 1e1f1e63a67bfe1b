"""The agent's rooms that connect the others: the file pipeline, launch control's
orchestrator, the housekeeper, status and health. ``guard.daemon`` builds and wires them;
they never import the daemon or the CLI.
"""
