"""``python -m claykiln.daemon.bench`` is ``kiln bench``."""

from claykiln.daemon.bench.command import bench_command

bench_command()(prog_name="python -m claykiln.daemon.bench")
