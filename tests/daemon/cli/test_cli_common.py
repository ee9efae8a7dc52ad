"""The CLI's pure helpers: header and key=value pairs, exit statuses, error lines, the socket
lookup (the system service's config included) and what `config show` redacts."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from claykiln.daemon.cli import common
from claykiln.daemon.cli.call import answer_status
from claykiln.daemon.cli.config import redacted
from claykiln.daemon.client import BreakerOpen, IdempotencyInFlight


def test_headers_take_name_colon_value_and_key_equals_value() -> None:
    """-H splits at the first ':' or '=', trimming spaces; --param keeps '=' only."""
    assert common.pairs(("x-trace: 1", "a=b:c", "b: x=y", "c:"), "-H", header=True) == {
        "x-trace": "1",
        "a": "b:c",
        "b": "x=y",
        "c": "",
    }
    assert common.pairs(("k=v: w",), "--param") == {"k": "v: w"}


@pytest.mark.parametrize("item", ["x-trace", ": 1", "=1"])
def test_a_header_without_a_name_or_separator_exits_2(
    item: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A header item without a name or a separator is a usage error naming both forms."""
    with pytest.raises(SystemExit) as info:
        common.pairs((item,), "--header", header=True)
    assert info.value.code == common.EXIT_USAGE
    assert 'takes key=value or "Name: value"' in capsys.readouterr().err


def test_call_args_carry_only_the_options_given() -> None:
    """kiln call and kiln submit build their arguments in one place: only the options given,
    -H in either form, a deadline of 0 kept (it is given)."""
    given = common.call_args(
        "push_row",
        param=("webhook_id=w1",),
        query=(),
        header=("x-trace: 1", "x-b=2"),
        json_body='{"a": 1}',
        lane=None,
        deadline_ms=0,
        idempotency_key="k",
    )
    assert given == {
        "operation": "push_row",
        "path_params": {"webhook_id": "w1"},
        "headers": {"x-trace": "1", "x-b": "2"},
        "json": {"a": 1},
        "deadline_ms": 0,
        "idempotency_key": "k",
    }


def test_answer_status_follows_httpies_check_status() -> None:
    """2xx and 3xx exit 0, 4xx exit 4, 5xx exit 5."""
    assert [answer_status(s) for s in (200, 204, 302, 400, 401, 499, 500, 503)] == [
        0,
        0,
        0,
        4,
        4,
        4,
        5,
        5,
    ]


def test_error_lines_name_the_retry_time_once() -> None:
    """A message that says "retry in" gets no second time; one that does not gets it added."""
    said = BreakerOpen("breaker 'clay' is open; retry in 4.918 s", retry_after=4.918)
    assert common.error_line(said) == "breaker_open: breaker 'clay' is open; retry in 4.918 s"
    unsaid = IdempotencyInFlight("key k is in flight", retry_after=1.0, details={"key": "k"})
    assert common.error_line(unsaid) == (
        'idempotency_in_flight: key k is in flight (retry in 1.000 s)\n{\n  "key": "k"\n}'
    )


def test_the_system_config_socket_is_read_leniently(tmp_path: Path) -> None:
    """[daemon].socket of the system config, relative to its directory; None for a file that
    is absent, not TOML, or sets no socket."""
    config = tmp_path / "kiln.toml"
    assert common.system_config_socket(config) is None
    config.write_text('[daemon]\nsocket = "run/kiln.sock"\n')
    assert common.system_config_socket(config) == tmp_path / "run" / "kiln.sock"
    config.write_text("[daemon\n")
    assert common.system_config_socket(config) is None
    config.write_text('[daemon]\nlog_level = "info"\n')
    assert common.system_config_socket(config) is None


def test_client_socket_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--socket, then KILN_SOCKET, then --config's socket, then the own default when it exists,
    else the system config's socket when it exists, else the own default."""
    own_dir = tmp_path / "run"
    own_dir.mkdir()
    own = own_dir / "kiln.sock"
    system_socket = tmp_path / "system.sock"
    system_config = tmp_path / "etc.toml"
    system_config.write_text(f'[daemon]\nsocket = "{system_socket}"\n')
    monkeypatch.setattr(common, "SYSTEM_CONFIG", system_config)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(own_dir))
    monkeypatch.setenv("KILN_SOCKET", str(tmp_path / "env.sock"))
    flag = tmp_path / "flag.sock"
    assert common.client_socket(flag, None) == (flag, "--socket")
    assert common.client_socket(None, None) == (tmp_path / "env.sock", "KILN_SOCKET")
    monkeypatch.delenv("KILN_SOCKET")
    file = tmp_path / "file.toml"
    file.write_text(f'[daemon]\nsocket = "{tmp_path / "file.sock"}"\n')
    assert common.client_socket(None, file) == (
        tmp_path / "file.sock",
        f"[daemon].socket of {file}",
    )
    assert common.client_socket(None, None) == (own, "the default")  # nothing exists yet
    system_socket.touch()
    assert common.client_socket(None, None) == (
        system_socket,
        f"[daemon].socket of {system_config}",
    )
    own.touch()
    assert common.client_socket(None, None) == (own, "the default")


def test_serve_and_clients_agree_on_kiln_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kiln serve takes KILN_SOCKET when neither --socket nor the command line names one."""
    from claykiln.daemon.cli import main

    seen: dict[str, object] = {}

    def fake_run(config: object, *, config_path: object, overrides: dict[str, object]) -> int:
        seen.update(overrides)
        seen["socket_in_config"] = config.daemon.socket
        return 0

    monkeypatch.setattr("claykiln.daemon.app.run_daemon", fake_run)
    monkeypatch.setenv("KILN_SOCKET", str(tmp_path / "env.sock"))
    with pytest.raises(SystemExit) as info:
        main.main(["serve", "--state-dir", str(tmp_path)], standalone_mode=False)
    assert info.value.code == 0
    assert seen["socket"] == seen["socket_in_config"] == tmp_path / "env.sock"
    with pytest.raises(SystemExit):
        main.main(["serve", "--socket", str(tmp_path / "flag.sock")], standalone_mode=False)
    assert seen["socket"] == tmp_path / "flag.sock"


def test_config_show_redacts_secrets_and_credential_headers() -> None:
    """daemon.secrets and headers named like credentials are redacted; the rest is kept."""
    data = {
        "daemon": {"secrets": ["a", "b"], "log_level": "info"},
        "upstreams": {
            "x": {"headers": {"Authorization": "t", "user-agent": "u", "x-api-key": "k"}}
        },
        "operations": {"o": {"headers": {"x-webhook-token": "w"}, "path": "/p"}},
    }
    assert redacted(data) == {
        "daemon": {"secrets": ["<redacted>", "<redacted>"], "log_level": "info"},
        "upstreams": {
            "x": {
                "headers": {
                    "Authorization": "<redacted>",
                    "user-agent": "u",
                    "x-api-key": "<redacted>",
                }
            }
        },
        "operations": {"o": {"headers": {"x-webhook-token": "<redacted>"}, "path": "/p"}},
    }


def test_every_command_takes_socket_and_config_after_its_name() -> None:
    """Each command but demo and bench, and each subcommand of a group, has --socket/--config."""
    from claykiln.daemon.cli import COMMANDS, main

    ctx = click.Context(main)
    for name in COMMANDS:
        if name in ("demo", "bench"):
            continue
        command = main.get_command(ctx, name)
        assert command is not None
        commands = [command]
        if isinstance(command, click.Group):
            commands += list(command.commands.values())
        for each in commands:
            opts = {opt for param in each.params for opt in param.opts}
            assert {"--socket", "--config"} <= opts, (name, each.name)
