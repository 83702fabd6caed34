"""The Prometheus rules, their promtool tests, the Grafana dashboard and the docs stay in step."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[2]
PROMETHEUS = ROOT / "deploy" / "observability" / "prometheus"
RULES = PROMETHEUS / "rules.yaml"
RULES_TEST = PROMETHEUS / "rules_test.yaml"
DASHBOARD = ROOT / "deploy" / "observability" / "grafana" / "gemma-serve-dashboard.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_URL = "https://github.com/gemma-serve/gemma-serve/blob/main/docs/runbook.md#"
TABLE_HEADER = "| Series | Type | Labels | Meaning |"
DATASOURCE_UID = "${datasource}"
# Grafana's variables, replaced by something PromQL accepts.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$namespace": ".*", "$pool": ".*"}
OUR_NAMES = re.compile(r"\bray_gemma_serve_[a-z0-9_]+|\bgemma_serve:[a-z0-9_:]+")
HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not on PATH (Debian/Ubuntu: apt-get install prometheus)",
)


def rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alerts() -> list[dict]:
    return [rule for rule in rules() if "alert" in rule]


def alert_names() -> list[str]:
    return sorted({rule["alert"] for rule in alerts()})


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def query_panels() -> list[dict]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in query_panels() for target in panel.get("targets", [])]


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def base_name(series: str) -> str:
    return HISTOGRAM_SUFFIX.sub("", series)


def documented_series() -> set[str]:
    """First-column names of every `| Series | Type | Labels | Meaning |` table."""
    names: set[str] = set()
    lines = METRICS_DOC.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip() != TABLE_HEADER:
            continue
        for row in lines[i + 2 :]:
            if not row.startswith("|"):
                break
            first_cell = row.split("|")[1]
            names.update(re.findall(r"`([^`]+)`", first_cell))
    return names


def github_anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def runbook_anchors() -> set[str]:
    headings = re.findall(r"^## (.+)$", RUNBOOK.read_text(), flags=re.MULTILINE)
    return {github_anchor(heading) for heading in headings}


def alert_rule_tests() -> list[dict]:
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    return [case for test in tests for case in test.get("alert_rule_test", [])]


@needs_promtool
def test_rules_pass_promtool_check():
    result = promtool("check", "rules", RULES.name, cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rule_unit_tests_pass():
    result = promtool("test", "rules", RULES_TEST.name, cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_dashboard_queries_parse_as_promql(tmp_path):
    records = []
    for i, expr in enumerate(dashboard_exprs()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        records.append({"record": f"dashboard_query_{i}", "expr": expr})
    rule_file = tmp_path / "dashboard_queries.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    result = promtool("check", "rules", rule_file.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_recording_rules_are_named_gemma_serve_what_aggregation():
    records = [rule["record"] for rule in rules() if "record" in rule]
    assert records
    badly_named = [name for name in records if not re.fullmatch(r"gemma_serve:\w+:\w+", name)]
    assert not badly_named


def test_every_alert_has_a_severity():
    missing = [
        rule["alert"]
        for rule in alerts()
        if rule.get("labels", {}).get("severity") not in {"critical", "warning"}
    ]
    assert not missing, f"alerts without severity critical or warning: {missing}"


def test_every_alert_has_a_summary_and_description():
    missing = [
        rule["alert"]
        for rule in alerts()
        if not rule.get("annotations", {}).get("summary")
        or not rule.get("annotations", {}).get("description")
    ]
    assert not missing, f"alerts without summary or description: {missing}"


def test_every_alert_links_to_its_own_runbook_section():
    anchors = runbook_anchors()
    wrong = [
        rule["alert"]
        for rule in alerts()
        if rule.get("annotations", {}).get("runbook_url") != RUNBOOK_URL + rule["alert"].lower()
        or rule["alert"].lower() not in anchors
    ]
    assert not wrong, f"runbook_url or docs/runbook.md heading missing or wrong: {wrong}"


def test_every_alert_has_a_unit_test_where_it_fires():
    firing = {case["alertname"] for case in alert_rule_tests() if case.get("exp_alerts")}
    untested = [name for name in alert_names() if name not in firing]
    assert not untested, f"no promtool test expects these alerts to fire: {untested}"


def test_every_alert_has_a_unit_test_where_it_stays_silent():
    silent = {case["alertname"] for case in alert_rule_tests() if not case.get("exp_alerts")}
    untested = [name for name in alert_names() if name not in silent]
    assert not untested, f"no promtool test expects these alerts to stay silent: {untested}"


def test_dashboard_is_valid_json_with_panels():
    assert dashboard()["panels"]


def test_every_dashboard_panel_has_a_query():
    empty = [
        panel["title"]
        for panel in query_panels()
        if not panel.get("targets")
        or not all(target.get("expr", "").strip() for target in panel["targets"])
    ]
    assert not empty, f"panels without a PromQL expr: {empty}"


def test_dashboard_panel_ids_are_unique():
    ids = [panel["id"] for panel in dashboard()["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_reads_the_datasource_variable_only():
    variables = dashboard()["templating"]["list"]
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in variables)
    sources = [panel["datasource"] for panel in query_panels()]
    sources += [target["datasource"] for panel in query_panels() for target in panel["targets"]]
    sources += [v["datasource"] for v in variables if "datasource" in v]
    assert all(source["uid"] == DATASOURCE_UID for source in sources)


def test_dashboard_has_a_pool_variable_from_label_values():
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert "label_values(" in variables["pool"]["definition"]


def test_every_gemma_serve_series_used_is_documented():
    used = set()
    for text in dashboard_exprs() + [rule["expr"] for rule in rules()]:
        used.update(base_name(name) for name in OUR_NAMES.findall(text))
    used.update(rule["record"] for rule in rules() if "record" in rule)
    missing = sorted(used - documented_series())
    assert not missing, f"not in a docs/metrics.md table: {missing}"


def test_every_documented_recording_rule_exists():
    records = {rule["record"] for rule in rules() if "record" in rule}
    documented = {name for name in documented_series() if name.startswith("gemma_serve:")}
    assert documented - records == set()
