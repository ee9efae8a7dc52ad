"""``python -m claykiln.daemon.demo`` is ``kiln demo``."""

from claykiln.daemon.demo.command import demo_command

demo_command()(prog_name="python -m claykiln.daemon.demo")
