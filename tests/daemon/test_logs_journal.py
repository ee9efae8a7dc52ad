"""Journal priorities: under journald every line starts with ``<N>`` so that
``journalctl -p warning`` selects exactly the alerts, and the stream is recognised by
``JOURNAL_STREAM`` (device:inode of stderr), not by a guess."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from claykiln.daemon.logs import (
    alert,
    configure_logging,
    get_logger,
    journal_priority,
    journal_stream,
    set_secrets,
)


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    set_secrets(())
    structlog.reset_defaults()


@pytest.mark.parametrize(
    ("line", "priority"),
    [
        ({"level": "critical", "alert": True, "severity": "critical"}, 2),
        ({"level": "error", "alert": True, "severity": "critical"}, 2),
        ({"level": "error", "alert": True, "severity": "warning"}, 4),
        ({"level": "warning", "alert": True, "severity": "warning"}, 4),
        ({"level": "info", "alert": True, "severity": "info"}, 4),
        ({"level": "critical"}, 5),
        ({"level": "error"}, 5),
        ({"level": "warning"}, 5),
        ({"level": "info"}, 6),
        ({"level": "debug"}, 7),
    ],
)
def test_priority_follows_severity_for_alerts_and_level_otherwise(
    line: dict[str, object], priority: int
) -> None:
    """Alerts take their severity's priority (<= 4); other lines their level's, at most notice."""
    assert journal_priority(line) == priority


def test_journal_stream_is_recognised_by_device_and_inode(tmp_path: Path) -> None:
    """JOURNAL_STREAM naming the stream's file says journald; another file or none does not."""
    path = tmp_path / "stderr"
    with path.open("w") as stream:
        st = os.fstat(stream.fileno())
        assert journal_stream(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not journal_stream(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not journal_stream(stream, {"JOURNAL_STREAM": "garbage"})
        assert not journal_stream(stream, {})
    assert not journal_stream(io.StringIO(), {"JOURNAL_STREAM": "1:2"})  # no file behind it


def test_every_line_is_prefixed_with_its_priority_under_journald(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """configure_logging detects journald from JOURNAL_STREAM and prefixes each JSON line; the
    JSON itself is unchanged (its level stays the line's level)."""
    path = tmp_path / "stderr"
    with path.open("w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        configure_logging(fmt="json", level="debug", stream=stream)
        log = get_logger("claykiln.test")
        log.debug("test.debugged")
        log.info("test.informed")
        log.warning("test.warned")
        log.error("test.failed")
        alert(log, "test.paged", severity="critical")
        alert(log, "test.warned_alert", severity="warning", level="error")
        alert(log, "test.cleared", severity="info")
    lines = path.read_text().splitlines()
    got = [(line[:3], json.loads(line[3:])["event"]) for line in lines]
    assert got == [
        ("<7>", "test.debugged"),
        ("<6>", "test.informed"),
        ("<5>", "test.warned"),
        ("<5>", "test.failed"),
        ("<2>", "test.paged"),
        ("<4>", "test.warned_alert"),
        ("<4>", "test.cleared"),
    ]
    assert json.loads(lines[5][3:])["level"] == "error"


def test_no_prefix_off_the_journal() -> None:
    """A plain stream (a file, a pipe, a terminal) gets bare lines."""
    stream = io.StringIO()
    configure_logging(fmt="json", level="info", stream=stream)
    get_logger("claykiln.test").warning("test.warned")
    assert stream.getvalue().startswith("{")
