"""Credentials: secrets read from files, one secret per file (CONTRACT: docs/configuration.md).

An auth block names a credential; its value is the content of ``<credentials_dir>/<name>``,
minus one trailing newline (``\\n`` or ``\\r\\n``). Under systemd, ``LoadCredential=`` puts the
files in ``$CREDENTIALS_DIRECTORY``, which is what the config uses when ``credentials_dir`` is
not set. Values never appear in a repr; :meth:`CredentialStore.secrets` feeds log redaction.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Mapping
from pathlib import Path

import attrs

__all__ = [
    "MAX_CREDENTIAL_BYTES",
    "CredentialError",
    "CredentialStore",
    "credential_name_problem",
    "load_credential",
]

# A secret is a token or a key; anything this large is the wrong file.
MAX_CREDENTIAL_BYTES = 64 * 1024


class CredentialError(Exception):
    """A credential name that cannot be a file name, or a file that exists but cannot be read.

    The message names the credential and the path, never the value.
    """


def credential_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a credential file (a sentence), or None if it can."""
    if not name:
        return "must not be empty"
    if "/" in name or "\\" in name:
        return 'must be a plain file name, without "/"'
    if name in (".", "..") or ".." in name:
        return 'must be a plain file name, without ".."'
    if "\x00" in name:
        return "must not contain NUL"
    return None


def load_credential(name: str, directory: Path) -> str | None:
    """The value of credential ``name`` in ``directory``, or None when the file does not exist.

    Strips one trailing newline. Raises :class:`CredentialError` for a name with ``/`` or
    ``..``, and for a file that exists but cannot be read (permission, a directory, not UTF-8,
    larger than :data:`MAX_CREDENTIAL_BYTES`) or cannot be a header value (not ASCII, a second
    line, a control character), naming the path, never the value.
    """
    problem = credential_name_problem(name)
    if problem is not None:
        msg = f"credential name {name!r} {problem}"
        raise CredentialError(msg)
    path = directory / name
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CREDENTIAL_BYTES + 1)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    except OSError as e:
        reason = e.strerror or str(e)
        if e.errno == errno.EACCES:
            reason = f"{reason} (the daemon's user needs read access)"
        msg = f"cannot read credential {name!r} from {path}: {reason}"
        raise CredentialError(msg) from None
    if len(data) > MAX_CREDENTIAL_BYTES:
        msg = f"credential file {path} is larger than {MAX_CREDENTIAL_BYTES} bytes; wrong file?"
        raise CredentialError(msg)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        msg = f"credential file {path} is not UTF-8 text"
        raise CredentialError(msg) from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text.isascii() or any(ord(c) < 0x20 or c == "\x7f" for c in text if c != "\t"):
        msg = (
            f"credential file {path} must hold one line of ASCII text "
            "(it is sent as an HTTP header value)"
        )
        raise CredentialError(msg)
    return text


@attrs.frozen
class CredentialStore:
    """A snapshot of credential values (name -> value) read at one moment (start or reload).

    ``missing`` holds the names whose files did not exist; the caller decides whether that is
    fatal (an operation that needs a missing credential should fail with a clear error).
    """

    directory: Path
    values: Mapping[str, str] = attrs.field(repr=False, factory=dict)
    missing: frozenset[str] = frozenset()

    @classmethod
    def load(cls, names: Iterable[str], directory: Path) -> CredentialStore:
        """Read every named credential; raises :class:`CredentialError` listing all unreadable."""
        values: dict[str, str] = {}
        missing: set[str] = set()
        errors: list[str] = []
        for name in sorted(set(names)):
            try:
                value = load_credential(name, directory)
            except CredentialError as e:
                errors.append(str(e))
                continue
            if value is None:
                missing.add(name)
            else:
                values[name] = value
        if errors:
            raise CredentialError("\n".join(errors))
        return cls(directory=directory, values=values, missing=frozenset(missing))

    def get(self, name: str) -> str | None:
        """The value of ``name``, or None if it was missing or never asked for."""
        return self.values.get(name)

    def secrets(self) -> tuple[str, ...]:
        """Every non-empty value, for the log redaction processor (``logs.set_secrets``)."""
        return tuple(sorted({v for v in self.values.values() if v}))
