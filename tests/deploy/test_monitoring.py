"""Every metric the alert rules and the dashboard query must exist in /metrics output."""

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = yaml.safe_load((ROOT / "deploy" / "alerts.yml").read_text())
DASHBOARD = json.loads((ROOT / "deploy" / "grafana" / "dashboard.json").read_text())
RULES = [rule for group in ALERTS["groups"] for rule in group["rules"]]

_METRIC = re.compile(r"\b((?:mlregistry|django)_[a-z0-9_]+)\b")
_SERIES_SUFFIXES = ("_bucket", "_sum", "_count", "_created")

# The names the metrics contract gives; rules + dashboard must use every one of them.
CONTRACT = {
    "mlregistry_predictions_total",
    "mlregistry_prediction_latency_seconds",
    "mlregistry_prediction_confidence",
    "mlregistry_cache_requests_total",
    "mlregistry_model_loads_total",
    "mlregistry_model_load_seconds",
    "mlregistry_validation_failures_total",
    "mlregistry_backup_last_success_timestamp_seconds",
    "mlregistry_job_runs_total",
    "mlregistry_job_duration_seconds",
    "mlregistry_drift_p_value",
    "mlregistry_drift_detected",
    "mlregistry_worker_heartbeat_timestamp_seconds",
    # prometheus_client appends "_total" to counters: these are the names really exposed.
    "django_http_requests_total_by_view_transport_method_total",
    "django_http_responses_total_by_status_view_method_total",
    "django_http_requests_latency_seconds_by_view_method",
}


def _expressions() -> list[str]:
    exprs = [rule["expr"] for rule in RULES]
    exprs += [t["expr"] for panel in DASHBOARD["panels"] for t in panel["targets"]]
    return exprs


def _referenced() -> set[str]:
    return {name for expr in _expressions() for name in _METRIC.findall(expr)}


def _base(name: str) -> str:
    for suffix in _SERIES_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _exposed(text: str) -> set[str]:
    """Names in exposition text: every `# TYPE` family (present even before a labelled metric
    has a sample) and every sample name."""
    names = set(re.findall(r"^# TYPE (\S+) ", text, flags=re.M))
    names |= set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{| )", text, flags=re.M))
    return names


@pytest.mark.django_db
def test_every_metric_in_rules_and_dashboard_exists_in_metrics_output(client):
    exposed = _exposed(client.get("/metrics").content.decode())
    missing = {name for name in _referenced() if name not in exposed and _base(name) not in exposed}
    assert not missing, f"queried but not exposed: {sorted(missing)}"


def test_rules_and_dashboard_cover_the_metrics_contract():
    referenced = {_base(name) for name in _referenced()}
    assert referenced >= CONTRACT, sorted(CONTRACT - referenced)


def test_the_required_alerts_are_there_with_severity_and_summary():
    names = {rule["alert"] for rule in RULES}
    assert {
        "HighErrorRate",
        "HighPredictionLatencyP99",
        "LowCacheHitRatio",
        "BackupTooOld",
        "DriftDetected",
        "WorkerDown",
    } <= names
    for rule in RULES:
        assert rule["labels"]["severity"] in {"page", "warning"}
        assert rule["annotations"]["summary"]
    assert "0.8" in next(r["expr"] for r in RULES if r["alert"] == "LowCacheHitRatio")


def test_dashboard_panels_use_the_provisioned_datasource():
    datasource = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    for panel in DASHBOARD["panels"]:
        assert panel["targets"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"]


def test_exposition_parsing_sees_families_without_samples():
    text = (
        "# HELP a_total x\n# TYPE a_total counter\n"
        "# HELP b_seconds y\n# TYPE b_seconds histogram\n"
        'b_seconds_bucket{le="1.0"} 0.0\nc 1.0\n'
    )
    assert _exposed(text) == {"a_total", "b_seconds", "b_seconds_bucket", "c"}
