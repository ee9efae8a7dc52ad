"""The daemon's configuration (CONTRACT: docs/configuration.md).

- ``load``: read a TOML file or the embedded ``default.toml``, describe it, compare for reload;
- ``schema``: the key tables, value checks and ``ConfigError`` (every problem reported at once);
- ``build`` / ``daemon_table``: structuring the sections into the frozen ``types``;
- ``units``: durations and sizes; ``credentials``: secret files (``LoadCredential=``).
"""

from claykiln.daemon.config import load
from claykiln.daemon.config.load import *  # noqa: F403  (the public names, listed once there)

__all__: list[str] = []
__all__ += load.__all__
