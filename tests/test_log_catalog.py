"""docs/alerting.md's event catalog is the truth about the log calls in daemon/, actors/, storage/.

The code side is read with ``ast``: every ``log.<level>("area.event", ...)`` /
``_log.<level>(...)`` call and every ``alert(log, "area.event", severity=...)`` call, with its
level, its ``alert=True`` / ``severity`` keywords and its keyword field names. The doc side is
the table under "## Event catalog" (the "## Planned events" table is checked separately).
"""

from __future__ import annotations

import ast
import importlib
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import structlog

from claykiln.daemon.logs import configure_logging, set_secrets

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("daemon", "actors", "storage")
DOC = ROOT / "docs" / "alerting.md"
# structlog method -> the line's ``level`` (``exception`` logs at error with a traceback).
LEVEL_OF_METHOD = {
    "debug": "debug",
    "info": "info",
    "warning": "warning",
    "error": "error",
    "exception": "error",
    "critical": "critical",
}
LOGGER_VARIABLES = ("log", "_log")
EVENT_NAME = re.compile(r"[a-z][a-z_]*\.[a-z][a-z_]*")
CELL_SPLIT = re.compile(r"(?<!\\)\|")
BACKTICKED = re.compile(r"`([^`]+)`")
MIN_EVENTS = 20  # guards against a parser that silently finds nothing


@attrs.frozen
class LogCall:
    """One log call site in the source tree."""

    event: str
    level: str
    severity: str | None  # None: not an alert
    fields: frozenset[str]
    module: str  # dotted import name, e.g. claykiln.actors.breaker
    where: str  # path:line, for messages


@attrs.frozen
class CatalogRow:
    """One row of the doc's event catalog."""

    event: str
    level: str
    alert: str  # "no" or "yes, <severity>"
    logger: str  # a logger name, or "none"
    fields: frozenset[str]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(("claykiln", *rel.parts))


def _event_of(node: ast.expr | None, where: str) -> str | None:
    if node is None:
        return None
    if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        pytest.fail(f"{where}: the event name must be a string literal (the catalog needs it)")
    return node.value if EVENT_NAME.fullmatch(node.value) else None


def _calls_in(path: Path) -> Iterator[LogCall]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module = _module_name(path)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        where = f"{path.relative_to(ROOT)}:{node.lineno}"
        keywords = {k.arg: k.value for k in node.keywords if k.arg is not None}
        severity_node = keywords.get("severity")
        severity = (
            severity_node.value
            if isinstance(severity_node, ast.Constant) and isinstance(severity_node.value, str)
            else None
        )
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr in LEVEL_OF_METHOD
            and isinstance(func.value, ast.Name)
            and func.value.id in LOGGER_VARIABLES
        ):
            event = _event_of(node.args[0] if node.args else None, where)
            alert_node = keywords.get("alert")
            is_alert = isinstance(alert_node, ast.Constant) and alert_node.value is True
            level = LEVEL_OF_METHOD[func.attr]
        elif isinstance(func, ast.Name) and func.id == "alert" and len(node.args) >= 2:
            # claykiln.actors.log.alert: the level follows the severity unless level= says.
            event = _event_of(node.args[1], where)
            is_alert = True
            level_node = keywords.get("level")
            if isinstance(level_node, ast.Constant) and isinstance(level_node.value, str):
                level = level_node.value
            else:
                level = severity or "?"
        else:
            continue
        if event is None:
            continue
        fields = frozenset(keywords) - {"alert", "severity", "level"}
        yield LogCall(event, level, severity if is_alert else None, fields, module, where)


def code_calls() -> list[LogCall]:
    """Every log call with a dotted event name in the three code folders."""
    calls: list[LogCall] = []
    for folder in SOURCE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            calls.extend(_calls_in(path))
    return calls


def _table_rows(text: str, heading: str) -> list[list[str]]:
    """The body rows (cells stripped) of the first table under ``## heading``."""
    lines = text.splitlines()
    start = lines.index(f"## {heading}")
    rows: list[list[str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if line.startswith("| `"):
            rows.append([cell.strip() for cell in CELL_SPLIT.split(line)[1:-1]])
    return rows


def catalog() -> dict[str, CatalogRow]:
    """The doc's event catalog, by event name."""
    rows: dict[str, CatalogRow] = {}
    for cells in _table_rows(DOC.read_text(encoding="utf-8"), "Event catalog"):
        assert len(cells) == 6, f"catalog row with {len(cells)} cells, want 6: {cells}"
        event, level, alert, logger, fields, _meaning = cells
        name = event.strip("`")
        assert name not in rows, f"{name} has two rows in the catalog"
        rows[name] = CatalogRow(
            event=name,
            level=level,
            alert=alert,
            logger=logger.strip("`"),
            fields=frozenset(BACKTICKED.findall(fields)),
        )
    return rows


def planned_events() -> set[str]:
    """Event names listed under "## Planned events" (none when there is no such section)."""
    text = DOC.read_text(encoding="utf-8")
    if "\n## Planned events\n" not in text:
        return set()
    rows = _table_rows(text, "Planned events")
    return {cells[0].strip("`") for cells in rows}


@pytest.fixture(scope="module")
def calls() -> list[LogCall]:
    found = code_calls()
    assert len({c.event for c in found}) >= MIN_EVENTS, "the code scan found too few events"
    return found


@pytest.fixture(scope="module")
def doc() -> dict[str, CatalogRow]:
    rows = catalog()
    assert len(rows) >= MIN_EVENTS, "the doc parse found too few catalog rows"
    return rows


def test_every_catalog_event_is_logged(calls: list[LogCall], doc: dict[str, CatalogRow]) -> None:
    """Each event in the catalog table is logged by some call in daemon/, actors/ or storage/."""
    logged = {c.event for c in calls}
    assert sorted(set(doc) - logged) == []


def test_every_alert_is_in_the_catalog(calls: list[LogCall], doc: dict[str, CatalogRow]) -> None:
    """Each alert=True event in the code has a catalog row."""
    missing = sorted({f"{c.event} ({c.where})" for c in calls if c.severity and c.event not in doc})
    assert missing == []


def test_every_logged_event_is_in_the_catalog(
    calls: list[LogCall], doc: dict[str, CatalogRow]
) -> None:
    """Each event the code logs, alert or not, has a catalog row ("one row per event")."""
    missing = sorted({f"{c.event} ({c.where})" for c in calls if c.event not in doc})
    assert missing == []


def test_level_alert_and_severity_match(calls: list[LogCall], doc: dict[str, CatalogRow]) -> None:
    """Each call site's level and alert severity are what its catalog row says."""
    wrong = []
    for c in calls:
        row = doc.get(c.event)
        if row is None:
            continue
        alert = f"yes, {c.severity}" if c.severity else "no"
        if (row.level, row.alert) != (c.level, alert):
            wrong.append(
                f"{c.where} {c.event}: code {c.level}/{alert}, doc {row.level}/{row.alert}"
            )
    assert wrong == []


def test_call_site_fields_are_documented(calls: list[LogCall], doc: dict[str, CatalogRow]) -> None:
    """Each keyword field a call site passes is named in its catalog row's fields."""
    missing = []
    for c in calls:
        row = doc.get(c.event)
        if row is not None and c.fields - row.fields:
            missing.append(f"{c.where} {c.event}: {sorted(c.fields - row.fields)}")
    assert missing == []


def test_planned_events_are_not_logged(calls: list[LogCall]) -> None:
    """An event listed as planned is not logged yet (once it is, it moves to the catalog)."""
    assert sorted(planned_events() & {c.event for c in calls}) == []


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging(fmt="json", level="debug", stream=stream)
    yield stream
    set_secrets(())
    structlog.reset_defaults()


def test_logger_field_matches_the_catalog(
    calls: list[LogCall], doc: dict[str, CatalogRow], json_lines: io.StringIO
) -> None:
    """A line from each logging module's logger carries the ``logger`` its catalog rows name."""
    by_module: dict[str, set[str]] = {}
    for c in calls:
        if c.event in doc:
            by_module.setdefault(c.module, set()).add(doc[c.event].logger)
    for module_name, documented in sorted(by_module.items()):
        module = importlib.import_module(module_name)
        logger = next(getattr(module, v) for v in LOGGER_VARIABLES if hasattr(module, v))
        logger.info("catalog.probe")
        line = json.loads(json_lines.getvalue().splitlines()[-1])
        assert line["event"] == "catalog.probe"
        assert documented == {line.get("logger", "none")}, module_name


# Test modules that read the catalog itself; naming an event there proves nothing about it.
CATALOG_READERS = ("test_log_catalog.py", "test_alert_rules.py")


def test_every_alert_event_is_asserted_by_some_test(doc: dict[str, CatalogRow]) -> None:
    """Each alert event of the catalog is named, as a string, by a test module that makes the
    daemon (or its actor) log it and asserts the line: an alert nobody has seen fire is a
    promise nobody checked."""
    sources = [
        path.read_text(encoding="utf-8")
        for path in sorted((ROOT / "tests").rglob("test_*.py"))
        if path.name not in CATALOG_READERS
    ]
    unseen = [
        row.event
        for row in doc.values()
        if row.alert != "no"
        and not any(f'"{row.event}"' in text or f"'{row.event}'" in text for text in sources)
    ]
    assert unseen == []
