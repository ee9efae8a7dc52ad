"""The ``kiln`` command line (CONTRACT: docs/operations.md lists every command).

``command`` holds the click group and the daemon's own commands; ``render`` the terminal views.
"""

from claykiln.daemon.cli.command import main

__all__ = ["main"]
