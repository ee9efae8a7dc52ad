"""Credentials read from real files: one secret per file, errors that name the path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from claykiln.daemon.config import load_config
from claykiln.daemon.config.credentials import (
    MAX_CREDENTIAL_BYTES,
    CredentialError,
    CredentialStore,
    load_credential,
)


@pytest.mark.parametrize(
    ("content", "value"),
    [
        (b"tok\n", "tok"),
        (b"tok\r\n", "tok"),
        (b"tok", "tok"),
        (b" spaced tok \n", " spaced tok "),
        (b"", ""),
    ],
)
def test_load_credential_strips_one_trailing_newline(
    tmp_path: Path, content: bytes, value: str
) -> None:
    """The value is the file's text minus exactly one trailing newline (LF or CRLF)."""
    (tmp_path / "clay-api-key").write_bytes(content)
    assert load_credential("clay-api-key", tmp_path) == value


def test_missing_credential_or_directory_is_none(tmp_path: Path) -> None:
    """A missing file, or a missing directory, gives None (the caller decides)."""
    assert load_credential("absent", tmp_path) is None
    assert load_credential("absent", tmp_path / "no-such-dir") is None


@pytest.mark.parametrize("name", ["../secret", "a/b", "..", "x..y", "", "/etc/passwd"])
def test_names_that_could_escape_the_directory_are_rejected(tmp_path: Path, name: str) -> None:
    """Names with "/" or ".." (or empty) are refused before any file is touched."""
    with pytest.raises(CredentialError, match=f"credential name {name!r} must"):
        load_credential(name, tmp_path)


def test_unreadable_credential_names_the_path(tmp_path: Path) -> None:
    """A file the daemon's user cannot read raises CredentialError naming the path."""
    secret = tmp_path / "token"
    secret.write_text("s3cr3t\n")
    secret.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(CredentialError) as info:
            load_credential("token", tmp_path)
        message = str(info.value)
    else:
        # root reads anything: drop the capabilities that let it, then read for real.
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv to drop CAP_DAC_OVERRIDE")
        code = (
            "import sys; from pathlib import Path\n"
            "from claykiln.daemon.config.credentials import load_credential, CredentialError\n"
            "try: load_credential('token', Path(sys.argv[1]))\n"
            "except CredentialError as e: print(e)\n"
        )
        caps = "-dac_override,-dac_read_search"
        python = [sys.executable, "-c", code, str(tmp_path)]
        done = subprocess.run(
            [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", *python],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        message = done.stdout.strip()
    assert message == (
        f"cannot read credential 'token' from {secret}: Permission denied "
        "(the daemon's user needs read access)"
    )
    assert "s3cr3t" not in message


def test_directory_in_place_of_a_credential_is_an_error(tmp_path: Path) -> None:
    """A directory where the file should be is an error naming the path."""
    (tmp_path / "token").mkdir()
    with pytest.raises(CredentialError, match=f"cannot read credential 'token' from {tmp_path}"):
        load_credential("token", tmp_path)


def test_oversized_or_binary_credentials_are_errors(tmp_path: Path) -> None:
    """A huge file or one that is not UTF-8 is refused, naming the path and not the content."""
    (tmp_path / "big").write_bytes(b"x" * (MAX_CREDENTIAL_BYTES + 1))
    (tmp_path / "bin").write_bytes(b"\xff\xfe")
    with pytest.raises(CredentialError, match=f"{tmp_path / 'big'} is larger than"):
        load_credential("big", tmp_path)
    with pytest.raises(CredentialError, match=f"{tmp_path / 'bin'} is not UTF-8"):
        load_credential("bin", tmp_path)


@pytest.mark.parametrize(
    "content",
    ["sk-caf\u00e9", "line-one\nline-two\n", "k9z\n\n", "sk\x00x", "sk\rInjected: yes"],
)
def test_credential_that_cannot_be_a_header_value_is_an_error(tmp_path: Path, content: str) -> None:
    """Non-ASCII text, a second line or a control byte would break (or smuggle) the header the
    credential is sent in: refused at load, naming the path and not the content."""
    (tmp_path / "token").write_text(content, encoding="utf-8")
    with pytest.raises(CredentialError, match="one line of ASCII text") as info:
        load_credential("token", tmp_path)
    assert content.strip() not in str(info.value)


def test_credential_with_a_tab_or_crlf_ending_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"key\twith-tab\r\n")
    assert load_credential("a", tmp_path) == "key\twith-tab"


def test_store_snapshots_values_and_missing_names(tmp_path: Path) -> None:
    """CredentialStore.load reads every name once; missing names are listed, not fatal."""
    (tmp_path / "clay-api-key").write_text("key-123\n")
    (tmp_path / "empty").write_text("")
    store = CredentialStore.load(["clay-api-key", "empty", "clay-webhook-token"], tmp_path)
    assert store.get("clay-api-key") == "key-123"
    assert store.get("empty") == ""
    assert store.get("clay-webhook-token") is None
    assert store.missing == {"clay-webhook-token"}
    (tmp_path / "clay-api-key").write_text("rotated\n")
    assert store.get("clay-api-key") == "key-123"


def test_store_secrets_feed_redaction_but_never_the_repr(tmp_path: Path) -> None:
    """secrets() lists the non-empty values; repr() shows none of them."""
    (tmp_path / "a").write_text("alpha-VALUE\n")
    (tmp_path / "b").write_text("beta-VALUE")
    (tmp_path / "e").write_text("\n")
    store = CredentialStore.load(["a", "b", "e"], tmp_path)
    assert store.secrets() == ("alpha-VALUE", "beta-VALUE")
    assert "VALUE" not in repr(store)


def test_store_reports_every_unreadable_credential(tmp_path: Path) -> None:
    """One CredentialError lists every credential that could not be read."""
    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    with pytest.raises(CredentialError) as info:
        CredentialStore.load(["d1", "d2", "../x"], tmp_path)
    lines = str(info.value).splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("credential name '../x' must")
    assert f"{tmp_path / 'd1'}" in lines[1] and f"{tmp_path / 'd2'}" in lines[2]


def test_the_default_config_credentials_load_from_credentials_directory(tmp_path: Path) -> None:
    """$CREDENTIALS_DIRECTORY (systemd LoadCredential) is where the config's credentials live."""
    (tmp_path / "clay-api-key").write_text("k\n")
    (tmp_path / "clay-webhook-token").write_text("w\n")
    config = load_config(None, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    store = CredentialStore.load(config.credential_names(), config.daemon.credentials_dir)
    assert store.values == {"clay-api-key": "k", "clay-webhook-token": "w"}
    assert store.missing == frozenset()
