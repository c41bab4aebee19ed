"""deploy/prometheus and deploy/grafana: the alert rules pass promtool's check and their own unit tests, the
Prometheus config is valid and scrapes the sidecar and the notifier, the dashboard holds Grafana's dashboard
model, and every metric a rule, a rule test or a panel names is one that the sidecar or the notifier exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS / "nt8bridge-rules.yml"
RULE_TESTS = PROMETHEUS / "nt8bridge-rules.test.yml"
CONFIG = PROMETHEUS / "prometheus.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "nt8bridge-dashboard.json"
EXPORTERS = (REPO / "bridge" / "transport" / "metrics.py", REPO / "bridge" / "alerts" / "metrics.py")
PROMETHEUS_OWN = {"up"}  # per scrape target, made by Prometheus itself

REQUIRED_ALERTS = {"NT8BridgeSidecarDown", "NT8BridgeKillSwitchActive", "NT8BridgeSessionsLost",
                   "NT8BridgeStorageNotOk", "NT8BridgeLimitUtilizationHigh", "NT8BridgeReconciliationBreaks",
                   "NT8BridgeStageLatencyHigh", "NT8BridgeTradingHold"}


def load_yaml(path: Path):
    from ruamel.yaml import YAML  # check-jsonschema's YAML parser, a dev dependency

    return YAML(typ="safe").load(path.read_text(encoding="utf-8"))


def promtool(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool is not installed (Debian's `prometheus` package; CI installs it)")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300, cwd=PROMETHEUS)


# --- metric names ---------------------------------------------------------------------------------

_FAMILY = re.compile(r'\b(Counter|Gauge|Histogram)MetricFamily\(\s*"([a-z_:][a-z0-9_:]*)"')


def exposed_names(kind: str, name: str) -> set[str]:
    """The sample names a prometheus_client family shows on /metrics."""
    if kind == "Counter":
        return {name.removesuffix("_total") + "_total"}
    if kind == "Histogram":
        return {name + "_bucket", name + "_sum", name + "_count"}
    return {name}


def exported_by(path: Path) -> set[str]:
    return {n for kind, name in _FAMILY.findall(path.read_text(encoding="utf-8")) for n in exposed_names(kind, name)}


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
             "inf", "nan"}


def metrics_in(expr: str) -> set[str]:
    """The metric names of a PromQL expression: what is left once strings, label matchers, ranges, grouping
    label lists and function calls are taken out."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', "", expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w$.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", text):
        if m.group(2) is None and m.group(1) not in _KEYWORDS:
            names.add(m.group(1))
    return names


def test_the_promql_reader_finds_metric_names_only():
    assert metrics_in('histogram_quantile(0.99, sum by (job, stage, le) (rate(a_bucket{stage="risk"}[5m]))) > 2000') \
        == {"a_bucket"}
    assert metrics_in("increase(b_total[10m]) > 0 or max by (kind) (b_total > 0 unless b_total offset 10m)") \
        == {"b_total"}
    assert metrics_in('up{job="x"} == 0 and on (instance) c') == {"up", "c"}
    assert metrics_in("sum(increase(d_total[$__rate_interval]))") == {"d_total"}


def test_the_exporters_are_read_as_prometheus_client_shows_them():
    """The notifier's collector, run for real, shows exactly the names read out of its source."""
    from prometheus_client.core import CollectorRegistry

    from bridge.alerts.metrics import NotifierCollector
    from bridge.alerts.service import AlertService
    from bridge.core.config import build_config

    service = AlertService(build_config({}, env={}), None, [], events="tcp://127.0.0.1:9")
    try:
        registry = CollectorRegistry()
        registry.register(NotifierCollector(service))
        shown = {n for fam in registry.collect() for n in exposed_names(fam.type.capitalize(), fam.name)}
    finally:
        service.close()
    assert shown == exported_by(EXPORTERS[1])
    sidecar = exported_by(EXPORTERS[0])
    assert {"nt8bridge_sessions_lost_total", "nt8bridge_stage_latency_microseconds_bucket",
            "nt8bridge_storage_state"} <= sidecar


def rule_exprs() -> list[str]:
    return [r["expr"] for g in load_yaml(RULES)["groups"] for r in g["rules"]]


def test_every_metric_a_rule_a_rule_test_or_a_panel_uses_is_exported():
    exported = set().union(*(exported_by(p) for p in EXPORTERS)) | PROMETHEUS_OWN
    used: dict[str, set[str]] = {}
    for expr in rule_exprs():
        used.setdefault("rules", set()).update(metrics_in(expr))
    for test in load_yaml(RULE_TESTS)["tests"]:
        for series in test["input_series"]:
            used.setdefault("rule tests", set()).update(metrics_in(series["series"]))
    for panel in json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]:
        for target in panel.get("targets", []):
            used.setdefault(f"panel {panel['title']!r}", set()).update(metrics_in(target["expr"]))
    unknown = {where: sorted(names - exported) for where, names in used.items() if names - exported}
    assert not unknown, f"metrics neither the sidecar nor the notifier exports: {unknown}"
    assert {"nt8bridge_trading_halted", "nt8bridge_limit_utilization_ratio", "nt8bridge_reconciliation_breaks_total",
            "nt8bridge_position_contracts", "nt8bridge_pnl_dollars"} <= set().union(*used.values())


# --- Prometheus -----------------------------------------------------------------------------------

def test_the_rules_pass_promtool_check():
    out = promtool("check", "rules", RULES.name)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_the_rules_pass_their_unit_tests():
    out = promtool("test", "rules", RULE_TESTS.name)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_the_rules_cover_what_the_desk_must_hear_of_and_each_is_tested_firing():
    rules = {r["alert"]: r for g in load_yaml(RULES)["groups"] for r in g["rules"]}
    assert REQUIRED_ALERTS <= set(rules)
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    fired = {case["alertname"] for test in load_yaml(RULE_TESTS)["tests"] for case in test["alert_rule_test"]
             if case.get("exp_alerts")}
    assert fired == set(rules), f"rules without a test that makes them fire: {sorted(set(rules) - fired)}"


def test_the_prometheus_config_is_valid_and_scrapes_the_sidecar_and_the_notifier():
    out = promtool("check", "config", CONFIG.name)
    assert out.returncode == 0, out.stdout + out.stderr
    config = load_yaml(CONFIG)
    targets = {job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
               for job in config["scrape_configs"]}
    assert targets == {"nt8bridge-sidecar": ["127.0.0.1:9108"], "nt8bridge-alerts": ["127.0.0.1:9109"]}
    assert config["rule_files"] == [RULES.name]
    jobs = {m for expr in rule_exprs() for m in re.findall(r'job="([^"]+)"', expr)}
    assert jobs <= set(targets)  # a rule about a job nobody scrapes would never fire


# --- Grafana --------------------------------------------------------------------------------------

_DATASOURCE = {"type": "object", "required": ["type", "uid"],
               "properties": {"type": {"const": "prometheus"}, "uid": {"type": "string", "minLength": 1}}}
# The part of Grafana's dashboard model (schemaVersion 39) that Grafana needs to import and draw the dashboard.
GRAFANA_DASHBOARD = {
    "type": "object",
    "required": ["title", "uid", "panels", "schemaVersion"],
    "properties": {
        "title": {"type": "string", "minLength": 1},
        "uid": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,40}$"},
        "schemaVersion": {"type": "integer", "minimum": 36},
        "refresh": {"type": "string"},
        "time": {"type": "object", "required": ["from", "to"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "templating": {"type": "object", "required": ["list"], "properties": {"list": {"type": "array", "items": {
            "type": "object", "required": ["name", "type"]}}}},
        "panels": {"type": "array", "minItems": 1, "items": {
            "type": "object",
            "required": ["id", "type", "title", "gridPos", "targets"],
            "properties": {
                "id": {"type": "integer", "minimum": 1},
                "type": {"enum": ["stat", "timeseries", "bargauge", "gauge", "table", "state-timeline", "text"]},
                "title": {"type": "string", "minLength": 1},
                "datasource": _DATASOURCE,
                "gridPos": {"type": "object", "required": ["h", "w", "x", "y"], "properties": {
                    "h": {"type": "integer", "minimum": 1}, "w": {"type": "integer", "minimum": 1, "maximum": 24},
                    "x": {"type": "integer", "minimum": 0, "maximum": 23}, "y": {"type": "integer", "minimum": 0}}},
                "targets": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["refId", "expr"],
                    "properties": {"refId": {"type": "string", "pattern": "^[A-Z]$"},
                                   "expr": {"type": "string", "minLength": 1}, "datasource": _DATASOURCE,
                                   "legendFormat": {"type": "string"}, "instant": {"type": "boolean"}}}},
                "fieldConfig": {"type": "object", "required": ["defaults"]},
            }}},
    },
}


def test_the_dashboard_holds_grafanas_model_and_the_panels_the_desk_needs():
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    jsonschema.validate(dash, GRAFANA_DASHBOARD)
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"  # the Prometheus picked when importing
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource"}
    titles = {p["title"]: p for p in panels}
    for wanted in ("Trading state", "Positions (contracts)", "P&L", "Limit use", "Sessions", "Stage latency p50 / p99",
                   "Storage state", "Reconciliation breaks"):
        assert wanted in titles
    latency = [t["expr"] for t in titles["Stage latency p50 / p99"]["targets"]]
    assert [e.split(",")[0] for e in latency] == ["histogram_quantile(0.5", "histogram_quantile(0.99"]
    assert all("nt8bridge_stage_latency_microseconds_bucket" in e for e in latency)
