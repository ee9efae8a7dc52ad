"""Default paths (CONTRACT): state dir, daemon socket, client socket precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from claykiln.daemon.client import _paths as paths


def test_state_dir_prefers_systemd_then_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    """$STATE_DIRECTORY wins; otherwise $XDG_STATE_HOME/claykiln for a non-root user."""
    assert paths.default_state_dir({"STATE_DIRECTORY": "/var/lib/x:/other"}) == Path("/var/lib/x")
    monkeypatch.setattr(paths, "_is_root", lambda: False)
    assert paths.default_state_dir({"XDG_STATE_HOME": "/s"}) == Path("/s/claykiln")
    monkeypatch.setattr(paths, "_is_root", lambda: True)
    assert paths.default_state_dir({}) == Path("/var/lib/claykiln")


def test_daemon_socket_prefers_runtime_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    """$RUNTIME_DIRECTORY, then /run/claykiln as root, then $XDG_RUNTIME_DIR, then state dir."""
    assert paths.default_socket_path(env={"RUNTIME_DIRECTORY": "/run/k"}) == Path(
        "/run/k/kiln.sock"
    )
    monkeypatch.setattr(paths, "_is_root", lambda: True)
    assert paths.default_socket_path(env={}) == Path("/run/claykiln/kiln.sock")
    monkeypatch.setattr(paths, "_is_root", lambda: False)
    env = {"XDG_RUNTIME_DIR": "/run/user/1000"}
    assert paths.default_socket_path(env=env) == Path("/run/user/1000/claykiln/kiln.sock")
    assert paths.default_socket_path(Path("/st"), env={}) == Path("/st/kiln.sock")


def test_client_socket_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Argument, then $KILN_SOCKET, then the user's daemon, then the system service's socket."""
    monkeypatch.setenv("KILN_SOCKET", "/env.sock")
    assert paths.client_socket_path("/arg.sock") == Path("/arg.sock")
    assert paths.client_socket_path() == Path("/env.sock")
    monkeypatch.delenv("KILN_SOCKET")
    own, system = tmp_path / "own.sock", tmp_path / "system.sock"
    monkeypatch.setattr(paths, "default_socket_path", lambda: own)
    monkeypatch.setattr(paths, "SYSTEM_SOCKET", system)
    assert paths.client_socket_path() == own  # neither exists: the user default
    system.touch()
    assert paths.client_socket_path() == system  # only the system service runs
    own.touch()
    assert paths.client_socket_path() == own  # the user's own daemon wins
