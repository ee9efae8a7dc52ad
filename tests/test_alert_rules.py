"""The alert rules shipped in docs/alerting/ cover the catalog: kiln-alerts.csv has one row per
alert event of docs/alerting.md with its severity, the Vector config is well formed and routes
every severity, loki-rules.yaml is exactly what kiln-alerts.csv renders to, the Alloy config
sets the labels the rules select on, and each alert has a journalctl recipe that finds its
lines. Vector is not installable here (no Debian, PyPI or npm package): ``vector validate`` runs
only where a ``vector`` binary is on PATH.

``python tests/test_alert_rules.py --write`` regenerates loki-rules.yaml from kiln-alerts.csv.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import structlog

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_log_catalog import catalog  # noqa: E402

from claykiln.daemon.logs import ALERT_PRIORITY, alert, configure_logging, get_logger  # noqa: E402

RULES = ROOT / "docs" / "alerting"
CSV = RULES / "kiln-alerts.csv"
VECTOR = RULES / "vector.toml"
LOKI = RULES / "loki-rules.yaml"
ALLOY = RULES / "kiln.alloy"
DOC = ROOT / "docs" / "alerting.md"
SEVERITIES = ("critical", "warning", "info")
RECIPE = re.compile(r"^journalctl -u kiln -p warning -o cat --since today -g '(.+)'$")
# The journal priority keywords of the alerts' priorities (ALERT_PRIORITY: 2 crit, 4 warning).
KEYWORDS = {2: "crit", 4: "warning"}


def alert_rows() -> list[dict[str, str]]:
    with CSV.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def catalog_alerts() -> dict[str, str]:
    """Alert event -> severity, from the doc's catalog."""
    return {
        row.event: row.alert.removeprefix("yes, ")
        for row in catalog().values()
        if row.alert != "no"
    }


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def render_loki_rules(rows: list[dict[str, str]]) -> str:
    """loki-rules.yaml for ``rows``: one rule per warning or critical alert event."""
    priorities = "|".join(KEYWORDS[ALERT_PRIORITY[s]] for s in ("critical", "warning"))
    out = [
        "# claykiln's alerts for Loki's ruler, over the journal shipped by kiln.alloy.",
        "# Generated from kiln-alerts.csv: python tests/test_alert_rules.py --write",
        "# (do not edit by hand). One rule per warning or critical alert event; each fires while",
        "# such a line came in the last 10 minutes. docs/alerting.md explains every event.",
        "groups:",
        "  - name: claykiln",
        "    rules:",
    ]
    for row in rows:
        if row["severity"] == "info":
            continue
        event = row["event"]
        name = "Kiln" + "".join(part.title() for part in re.split(r"[._]", event))
        selector = f'{{job="kiln", priority=~"{priorities}"}} | json | event="{event}"'
        ends = f" Ended by {row['pair']}." if row["pair"] else ""
        out += [
            f"      - alert: {name}",
            f"        expr: {_quote(f'sum by (host) (count_over_time({selector} [10m])) > 0')}",
            "        labels:",
            f"          severity: {row['severity']}",
            "        annotations:",
            f"          summary: {_quote(f'kiln on {{{{ $labels.host }}}}: {event}')}",
            f"          description: {_quote(row['action'] + ends)}",
        ]
    return "\n".join(out) + "\n"


def test_the_csv_has_one_row_per_alert_event_with_its_severity() -> None:
    """kiln-alerts.csv and the catalog name the same alert events with the same severities;
    every pair names an alert event; every action is written."""
    rows = alert_rows()
    assert list(rows[0]) == ["event", "severity", "pair", "action"]
    assert len({r["event"] for r in rows}) == len(rows), "an event has two rows"
    assert {r["event"]: r["severity"] for r in rows} == catalog_alerts()
    for row in rows:
        for paired in row["pair"].split():
            assert paired in catalog_alerts(), f"{row['event']}: unknown pair {paired}"
        assert row["action"].strip(), row["event"]


def test_vector_config_reads_the_alerts_and_routes_every_severity() -> None:
    """vector.toml: the journald source keeps the alerts' priorities, the enrichment table is
    kiln-alerts.csv with its columns, every input exists, the route covers each severity and
    every route feeds a sink."""
    config = tomllib.loads(VECTOR.read_text(encoding="utf-8"))
    table = config["enrichment_tables"]["kiln_alerts"]
    assert Path(table["file"]["path"]).name == CSV.name
    assert list(table["schema"]) == list(alert_rows()[0])
    source = config["sources"]["kiln_journal"]
    assert source["type"] == "journald" and source["include_units"] == ["kiln.service"]
    wanted = {str(p) for p in ALERT_PRIORITY.values()}
    assert wanted <= set(source["include_matches"]["PRIORITY"])
    assert max(int(p) for p in source["include_matches"]["PRIORITY"]) <= 4
    transforms, sinks = config["transforms"], config["sinks"]
    remap = transforms["kiln_alerts"]["source"]
    assert "parse_json" in remap and "line.alert != true" in remap
    assert 'get_enrichment_table_record("kiln_alerts"' in remap
    route = transforms["kiln_by_severity"]["route"]
    assert set(route) == set(SEVERITIES)
    for severity, condition in route.items():
        assert condition == f'.severity == "{severity}"'
    names = set(config["sources"]) | set(transforms)
    outputs = names | {f"kiln_by_severity.{s}" for s in route}
    for name, component in {**transforms, **sinks}.items():
        for feed in component["inputs"]:
            assert feed in outputs, f"{name} reads {feed}, which nothing produces"
    fed = {feed for sink in sinks.values() for feed in sink["inputs"]}
    assert fed == {f"kiln_by_severity.{s}" for s in SEVERITIES}


@pytest.mark.skipif(shutil.which("vector") is None, reason="no vector binary on PATH")
def test_vector_validates_the_config(tmp_path: Path) -> None:  # pragma: no cover - no vector here
    """Where Vector is installed, ``vector validate`` accepts the config (tables beside it)."""
    text = VECTOR.read_text(encoding="utf-8").replace("/etc/vector/kiln-alerts.csv", str(CSV))
    config = tmp_path / "kiln.toml"
    config.write_text(text, encoding="utf-8")
    done = subprocess.run(
        ["vector", "validate", "--no-environment", str(config)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_loki_rules_are_rendered_from_the_csv() -> None:
    """loki-rules.yaml is exactly what kiln-alerts.csv renders to: one rule per warning or
    critical alert event, with its severity (regenerate with --write)."""
    rows = alert_rows()
    assert LOKI.read_text(encoding="utf-8") == render_loki_rules(rows), (
        "loki-rules.yaml is stale: python tests/test_alert_rules.py --write"
    )
    text = LOKI.read_text(encoding="utf-8")
    for row in rows:
        present = f'event="{row["event"]}"' in text
        assert present == (row["severity"] != "info"), row["event"]


def test_alloy_config_sets_the_labels_the_rules_select_on() -> None:
    """kiln.alloy reads kiln.service's journal and sets job="kiln" and the priority label."""
    text = ALLOY.read_text(encoding="utf-8")
    assert 'loki.source.journal "kiln"' in text
    assert 'matches       = "_SYSTEMD_UNIT=kiln.service"' in text
    assert 'labels        = {job = "kiln"}' in text
    assert '"__journal_priority_keyword"' in text and 'target_label  = "priority"' in text
    assert '"__journal__hostname"' in text and 'target_label  = "host"' in text
    assert "loki.relabel.kiln_journal.rules" in text and "loki.write.default.receiver" in text


def recipes() -> dict[str, tuple[str, str]]:
    """Alert event -> (severity, recipe) from the doc's recipes table."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = lines.index("## Recipes: one `journalctl` line per alert")
    out: dict[str, tuple[str, str]] = {}
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if line.startswith("| `"):
            event, severity, recipe = (c.strip() for c in line.strip("|").split("|"))
            assert event.strip("`") not in out, f"two recipes for {event}"
            out[event.strip("`")] = (severity, recipe.strip("`"))
    return out


def _alert_line(event: str, severity: str) -> str:
    """The JSON line the daemon writes for ``event`` (the real logging setup)."""
    stream = io.StringIO()
    configure_logging(fmt="json", level="info", stream=stream)
    try:
        alert(get_logger("claykiln.test"), event, severity=severity, detail="x")
    finally:
        structlog.reset_defaults()
    return stream.getvalue().strip()


def test_each_alert_has_a_journalctl_recipe_that_finds_its_lines() -> None:
    """Every alert event has one recipe; its -p keeps the alert's journal priority and its -g
    pattern matches that event's line and no other alert's."""
    found = recipes()
    alerts = catalog_alerts()
    assert set(found) == set(alerts)
    lines = {event: _alert_line(event, severity) for event, severity in alerts.items()}
    for event, (severity, recipe) in found.items():
        assert severity == alerts[event], event
        match = RECIPE.match(recipe)
        assert match, f"{event}: {recipe}"
        assert ALERT_PRIORITY[severity] <= 4  # what -p warning keeps
        pattern = re.compile(match.group(1))
        matched = {other for other, line in lines.items() if pattern.search(line)}
        assert matched == {event}, (event, sorted(matched))
        assert json.loads(lines[event])["event"] == event


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        LOKI.write_text(render_loki_rules(alert_rows()), encoding="utf-8")
        print(f"wrote {LOKI}")
    else:
        sys.exit("usage: python tests/test_alert_rules.py --write")
