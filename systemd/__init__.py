"""The systemd units and snippets of this folder, as package data (``claykiln.daemon.systemd``).

No code: the ``__init__`` only makes the folder a package, so a wheel and an editable install
both carry the files that ``kiln systemd install`` copies (docs/operations.md, "Install").
"""
