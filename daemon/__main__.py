"""``python -m claykiln.daemon`` is ``kiln``."""

from .cli import main

main()
