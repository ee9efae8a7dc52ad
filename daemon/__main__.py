"""``python -m claykiln.daemon`` is ``kiln``."""

from claykiln.daemon.cli import main

main()
