"""Value parsers several config sections share: header tables and names, credential names,
the ``auth`` table, and the "did you mean" hint for an unknown name."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping

from claykiln.daemon.config.credentials import credential_name_problem
from claykiln.daemon.config.schema import Invalid, Table
from claykiln.daemon.config.types import AuthConfig

__all__ = ["HEADER_NAME", "auth_table", "header_name", "header_table", "unknown_hint"]

HEADER_NAME = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"


def header_table(raw: object) -> dict[str, str]:
    rule = 'must be a table of header names to strings, e.g. { "user-agent" = "claykiln/0.1" }'
    if not isinstance(raw, Mapping):
        raise Invalid(rule)
    for name, value in raw.items():
        if not re.fullmatch(HEADER_NAME, name):
            msg = f"{json.dumps(name)} is not a valid header name; {rule}"
            raise Invalid(msg)
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            msg = f"the value of {json.dumps(name)} must be a string without line breaks"
            raise Invalid(msg)
    return dict(raw)


def header_name(raw: object) -> str:
    if not isinstance(raw, str) or not re.fullmatch(HEADER_NAME, raw):
        msg = 'must be an HTTP header name (letters, digits, "-", no spaces), e.g. "clay-api-key"'
        raise Invalid(msg)
    return raw


def _credential(raw: object) -> str:
    if not isinstance(raw, str):
        msg = 'must be a credential file name, e.g. "clay-api-key"'
        raise Invalid(msg)
    problem = credential_name_problem(raw)
    if problem is not None:
        msg = f'{problem} (a file name in credentials_dir, e.g. "clay-api-key")'
        raise Invalid(msg)
    return raw


def auth_table(t: Table | None) -> AuthConfig | None:
    if t is None:
        return None
    header = t.require("header", header_name, '"clay-api-key"')
    credential = t.require("credential", _credential, '"clay-api-key"')
    t.finish()
    if header is None or credential is None:
        return None
    return AuthConfig(header=header, credential=credential)


def unknown_hint(name: str, defined: Mapping[str, object]) -> str:
    """``; did you mean X? (defined: A, B)`` or ``; defined: A, B`` for an unknown name."""
    near = difflib.get_close_matches(name, list(defined), n=1, cutoff=0.6)
    known = ", ".join(sorted(defined)) or "none"
    return f"; did you mean {near[0]}? (defined: {known})" if near else f"; defined: {known}"
