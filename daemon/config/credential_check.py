"""What ``kiln check-config`` says about the credential files a config names (CONTRACT:
docs/configuration.md, "Credentials").

The daemon reads each credential at start and on reload (``credentials.py``): a missing file is
a warning there (calls go out without the header), a file it cannot use stops the start. The
check reports the same, before the daemon runs: a file that exists but cannot be used (a
directory, not UTF-8, too large, not one line of ASCII) is a problem; a missing file is a
warning, and so is a file this user may not read (the daemon may run as another user).
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from claykiln.daemon.config.credentials import CredentialError, load_credential
from claykiln.daemon.config.schema import Problems

__all__ = ["check_credential_files"]

# Where kiln.service's LoadCredential= lines read the files from (systemd/kiln.service).
SYSTEMD_SOURCES = Path("/etc/claykiln/credentials")


def check_credential_files(
    users: Mapping[str, Sequence[str]],
    directory: Path,
    problems: Problems,
    warnings: list[str],
    env: Mapping[str, str],
) -> None:
    """Check the file of each credential in ``users`` (name -> the config keys naming it)."""
    from_systemd = bool(env.get("CREDENTIALS_DIRECTORY"))
    for name in sorted(users):
        path = directory / name
        keys = ", ".join(users[name])
        if path.exists() and not os.access(path, os.R_OK):
            warnings.append(
                f"credential {name} ({keys}): {path} is not readable by {getpass.getuser()}, "
                "who runs this check; the daemon's user must be able to read it"
            )
            continue
        try:
            value = load_credential(name, directory)
        except CredentialError as exc:
            problems.add(f"credential {name} ({keys}): {exc}; the daemon would not start")
            continue
        if value is not None:
            continue
        where = ""
        if not from_systemd:
            where = (
                f"; under systemd the daemon reads $CREDENTIALS_DIRECTORY instead, which "
                f"kiln.service's LoadCredential= fills from {SYSTEMD_SOURCES / name}"
            )
        warnings.append(
            f"credential {name} ({keys}): {path} does not exist; calls that need it go out "
            f"without it (the upstream will likely answer 401). Put the secret there, one "
            f"line{where}"
        )
