"""The daemon's configuration (CONTRACT: docs/configuration.md).

- ``load``: read a TOML file or the embedded ``default.toml``, describe it, compare for reload;
- ``schema``: the key tables, value checks and ``ConfigError`` (every problem reported at once);
- ``build`` / ``daemon_table``: structuring the sections into the frozen ``types``;
- ``units``: durations and sizes; ``credentials``: secret files (``LoadCredential=``).
"""

from claykiln.daemon.config.load import (
    EMBEDDED_SOURCE,
    METHODS,
    RESTART_KEYS,
    AuthConfig,
    ConfigError,
    DaemonConfig,
    KilnConfig,
    LimitsConfig,
    OperationConfig,
    StorageConfig,
    UpstreamConfig,
    default_toml,
    describe,
    load_config,
    restart_required,
)

__all__ = [
    "EMBEDDED_SOURCE",
    "METHODS",
    "RESTART_KEYS",
    "AuthConfig",
    "ConfigError",
    "DaemonConfig",
    "KilnConfig",
    "LimitsConfig",
    "OperationConfig",
    "StorageConfig",
    "UpstreamConfig",
    "default_toml",
    "describe",
    "load_config",
    "restart_required",
]
