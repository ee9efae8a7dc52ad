"""The outbox's keys: [daemon.outbox], an operation's outbox and webhook, on_failure = "dlq"."""

from __future__ import annotations

from pathlib import Path

import pytest

from claykiln.actors.jobs_policy import WebhookRules
from claykiln.daemon import wiring
from claykiln.daemon.config import ConfigError, load_config
from claykiln.daemon.config.outbox import OutboxConfig, OutboxKeys, read_outbox
from claykiln.daemon.config.schema import Problems, Table

OP = '[operations.op]\nupstream = "clay"\nmethod = "POST"\npath = "/v1/x"\n'


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "kiln.toml"
    path.write_text(text)
    return load_config(path, env={}, state_dir=tmp_path)


def problems(tmp_path: Path, text: str) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value.problems


def test_the_embedded_default_pushes_rows_with_clays_webhook_rules() -> None:
    """push_row: 5 attempts from 2 s to 10 min in lane bulk, 100 KB rows, 50,000 per source;
    the outbox runs 4 jobs at once and keeps done jobs a day."""
    config = load_config(None, env={})
    push = config.operations["push_row"]
    assert push.outbox == OutboxKeys(5, 2.0, 600.0, "bulk")
    assert push.webhook == WebhookRules(max_row=100_000, lifetime_rows=50_000)
    assert config.operations["me"].webhook is None
    assert config.daemon.outbox == OutboxConfig()
    settings = wiring.outbox_settings(config)
    policy = settings.policy("push_row")
    assert (policy.derive_key, policy.key_field, policy.lane) == (True, None, "bulk")
    assert settings.policy("start_routine").derive_key is False


def test_every_key_is_read(tmp_path: Path) -> None:
    """Each key of [daemon.outbox], outbox and webhook lands in the config and the policy."""
    text = (
        '[daemon.outbox]\nconcurrency = 8\ndone_retention = "1h"\ndlq_degraded = 5\n'
        "retry_rate = 2.5\n"
        + OP
        + 'on_failure = "dlq"\nkey_field = "kiln_key"\nidempotency = "derive"\n'
        + 'outbox = { max_attempts = 9, backoff_base = "1s", backoff_cap = "1m", '
        + 'lane = "critical" }\nwebhook = { max_row = "10KiB", lifetime_rows = 100 }\n'
    )
    config = load(tmp_path, text)
    op = config.operations["op"]  # type: ignore[attr-defined]
    assert config.daemon.outbox == OutboxConfig(8, 3600.0, 5, 2.5)  # type: ignore[attr-defined]
    assert op.outbox == OutboxKeys(9, 1.0, 60.0, "critical")
    assert op.webhook == WebhookRules(max_row=10_240, lifetime_rows=100)
    assert op.on_failure == "dlq"
    policy = wiring.outbox_settings(config).policy("op")  # type: ignore[arg-type]
    assert (policy.max_attempts, policy.base, policy.cap, policy.lane) == (9, 1.0, 60.0, "critical")
    assert policy.key_field == "kiln_key" and policy.webhook == op.webhook


def test_a_job_lane_defaults_to_bulk_else_the_operations_own(tmp_path: Path) -> None:
    """Without outbox.lane a job runs in bulk; with no bulk lane, in the operation's lane."""
    assert load(tmp_path, OP).operations["op"].outbox.lane == "bulk"  # type: ignore[attr-defined]
    keys, webhook = read_outbox(Table({}, "operations.op", Problems()), "fast", {"fast": 1})
    assert (keys.lane, webhook) == ("fast", None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            OP + 'outbox = { lane = "nowhere" }\n',
            'operations.op.outbox.lane = "nowhere": unknown lane; defined: bulk, critical, normal',
        ),
        (
            OP + 'outbox = { backoff_base = "5s", backoff_cap = "1s" }\n',
            'operations.op.outbox.backoff_cap = "1s": must be at least backoff_base (5s)',
        ),
        (
            OP + "outbox = { max_attempts = 0 }\n",
            "operations.op.outbox.max_attempts = 0: must be an integer between 1 and 100, e.g. 5",
        ),
        (
            OP + "webhook = { lifetime_rows = 0 }\n",
            "operations.op.webhook.lifetime_rows = 0: must be an integer >= 1, e.g. 50000",
        ),
        (
            OP + "outbox = { attempts = 3 }\n",
            "unknown key operations.op.outbox.attempts; did you mean max_attempts?",
        ),
        (
            "[daemon.outbox]\nconcurrency = 0\n",
            "daemon.outbox.concurrency = 0: must be an integer between 1 and 1024, e.g. 4",
        ),
    ],
    ids=["lane", "cap-below-base", "attempts", "lifetime", "unknown", "concurrency"],
)
def test_bad_outbox_keys_say_what_to_fix(tmp_path: Path, text: str, expected: str) -> None:
    """Each problem names the key, the value and what is allowed."""
    assert problems(tmp_path, text) == (expected,)
