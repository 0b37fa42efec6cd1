from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from django.core.management import call_command

from mlregistry import services
from mlregistry.models import Stage
from predictions.models import PredictionLog
from quality import drift
from quality.models import DriftReport, DriftStatus
from quality.tasks import drift_check_task
from tests import factories

pytestmark = pytest.mark.django_db

NAMES = factories.IRIS_FEATURES
MEANS = [5.8, 3.0, 3.7, 1.2]
SCALES = [0.8, 0.4, 1.7, 0.7]
AS_OF = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _rows(seed: int, n: int, shift: dict[str, float] | None = None) -> list[dict]:
    rng = np.random.default_rng(seed)
    shift = shift or {}
    columns = {
        name: rng.normal(mean + shift.get(name, 0.0) * scale, scale, n)
        for name, mean, scale in zip(NAMES, MEANS, SCALES, strict=True)
    }
    return [{name: float(columns[name][i]) for name in NAMES} for i in range(n)]


def _production(model, *, reference=True, c=1.0):
    version = factories.version_create(
        model, c=c, reference_sample=_rows(1, 500) if reference else None
    )
    return services.model_version_transition(version=version, stage=Stage.PRODUCTION, actor="t")


def _serve(version, rows, *, at=AS_OF - timedelta(hours=1), prefix="r"):
    PredictionLog.objects.bulk_create(
        PredictionLog(
            request_id=f"{prefix}-{i}",
            model_id=version.model_id,
            version=version,
            features=row,
            output=0,
            created_at=at,
        )
        for i, row in enumerate(rows)
    )


def test_drift_is_detected_on_the_shifted_feature_only(iris_model):
    version = _production(iris_model)
    _serve(version, _rows(2, 300, shift={"petal_length": 1.0}))

    [report] = drift.drift_check(as_of=AS_OF)

    assert report.status == DriftStatus.DRIFT
    assert report.drifted_features == ["petal_length"]
    assert report.sample_size == 300
    assert report.reference_size == 500
    by_name = {f["feature"]: f for f in report.features}
    assert by_name["petal_length"]["test"] == "ks"
    assert by_name["petal_length"]["p_value"] < 1e-6
    assert all(by_name[n]["p_value"] > 0.05 for n in NAMES if n != "petal_length")


def test_same_distribution_is_not_drift(iris_model):
    version = _production(iris_model)
    _serve(version, _rows(3, 300))

    [report] = drift.drift_check(as_of=AS_OF)

    assert report.status == DriftStatus.OK
    assert report.drifted_features == []
    assert [f["feature"] for f in report.features] == NAMES
    assert all(not f["drift"] and f["p_value"] > 0.05 for f in report.features)


def test_rows_outside_the_window_and_other_versions_are_not_counted(iris_model, settings):
    settings.DRIFT_WINDOW_HOURS = 24
    version = _production(iris_model)
    other = factories.version_create(iris_model, c=2.0)
    _serve(version, _rows(2, 300, shift={"petal_length": 3.0}), at=AS_OF - timedelta(days=2))
    _serve(other, _rows(2, 300, shift={"petal_length": 3.0}), prefix="other")
    _serve(version, _rows(4, 100), prefix="recent")

    [report] = drift.drift_check(as_of=AS_OF)

    assert report.sample_size == 100
    assert "petal_length" not in report.drifted_features
    assert report.window_start == AS_OF - timedelta(hours=24)
    assert report.window_end == AS_OF


def test_version_without_reference_says_no_reference(iris_model):
    version = _production(iris_model, reference=False)
    _serve(version, _rows(2, 100))

    [report] = drift.drift_check(as_of=AS_OF)

    assert report.status == DriftStatus.NO_REFERENCE
    assert report.features == []


def test_too_few_served_rows_is_insufficient_data(iris_model, settings):
    settings.DRIFT_MIN_SAMPLES = 50
    version = _production(iris_model)
    _serve(version, _rows(2, 49))

    [report] = drift.drift_check(as_of=AS_OF)

    assert report.status == DriftStatus.INSUFFICIENT_DATA
    assert report.sample_size == 49


def test_threshold_is_configurable(iris_model, settings):
    version = _production(iris_model)
    _serve(version, _rows(2, 300, shift={"petal_length": 0.3}))
    settings.DRIFT_P_VALUE_THRESHOLD = 1e-12

    [report] = drift.drift_check(as_of=AS_OF)

    assert report.threshold == 1e-12
    assert report.status == DriftStatus.OK


def test_categorical_features_use_chi_squared():
    schema = [{"name": "colour", "type": "string"}, {"name": "flag", "type": "boolean"}]
    rng = np.random.default_rng(5)
    reference = [
        {"colour": str(c), "flag": True} for c in rng.choice(["red", "green", "blue"], 400)
    ]
    same = [{"colour": str(c), "flag": True} for c in rng.choice(["red", "green", "blue"], 300)]
    skewed = [
        {"colour": str(c), "flag": True}
        for c in rng.choice(["red", "green", "blue"], 300, p=[0.8, 0.1, 0.1])
    ]

    unchanged = drift.feature_drift(schema=schema, reference=reference, served=same, threshold=0.05)
    changed = drift.feature_drift(schema=schema, reference=reference, served=skewed, threshold=0.05)

    assert [(f["feature"], f["test"], f["drift"]) for f in unchanged] == [
        ("colour", "chi2", False),
        ("flag", "chi2", False),
    ]
    assert changed[0]["drift"] is True
    assert changed[0]["p_value"] < 1e-6


def test_feature_missing_from_served_rows_is_reported_untested():
    schema = [{"name": "a", "type": "float"}, {"name": "b", "type": "string"}]
    entries = drift.feature_drift(
        schema=schema, reference=[{"a": 1.0, "b": "x"}] * 5, served=[{}] * 5, threshold=0.05
    )
    assert [(e["feature"], e["p_value"], e["drift"]) for e in entries] == [
        ("a", None, False),
        ("b", None, False),
    ]


def test_task_rerun_for_the_same_window_rewrites_its_report(iris_model):
    version = _production(iris_model)
    _serve(version, _rows(2, 100))

    first = drift_check_task(as_of=AS_OF.isoformat())
    second = drift_check_task(as_of=AS_OF.isoformat())

    assert first == second
    assert DriftReport.objects.count() == 1


def test_task_without_arguments_ends_the_window_on_the_hour(iris_model):
    _production(iris_model)
    [report_id] = drift_check_task()
    report = DriftReport.objects.get(pk=report_id)
    assert (report.window_end.minute, report.window_end.second) == (0, 0)


def test_only_production_versions_are_checked(iris_model):
    factories.version_create(iris_model, reference_sample=_rows(1, 10))
    assert drift.drift_check(as_of=AS_OF) == []


def test_command_reports_each_production_version(iris_model, capsys):
    version = _production(iris_model)
    _serve(version, _rows(2, 300, shift={"sepal_width": 2.0}))

    call_command("drift_check", "--model", "iris", "--as-of", AS_OF.isoformat())

    out = capsys.readouterr().out
    assert "iris v1: drift (served 300, reference 500, drifted: sepal_width)" in out


def test_command_rejects_unknown_model_and_naive_time(db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="No registered model"):
        call_command("drift_check", "--model", "nope")
    with pytest.raises(CommandError, match="time zone"):
        call_command("drift_check", "--as-of", "2026-01-01T00:00:00")


def test_command_without_production_versions_says_so(db, capsys):
    call_command("drift_check")
    assert "No production versions" in capsys.readouterr().out


def test_api_lists_reports_newest_first_with_window_sizes_and_features(iris_model, client_api):
    version = _production(iris_model)
    _serve(version, _rows(2, 300, shift={"petal_length": 1.0}))
    drift.drift_check(as_of=AS_OF - timedelta(days=1))
    drift.drift_check(as_of=AS_OF)

    response = client_api.get("/api/v1/models/iris/drift")

    assert response.status_code == 200
    reports = response.json()["results"]
    assert [r["window"]["end"] for r in reports] == [
        "2026-11-20T12:00:00Z",
        "2026-11-19T12:00:00Z",
    ]
    newest = reports[0]
    assert newest["status"] == "drift"
    assert newest["version"] == 1
    assert newest["window"]["start"] == "2026-11-19T12:00:00Z"
    assert (newest["sample_size"], newest["reference_size"]) == (300, 500)
    assert newest["drifted_features"] == ["petal_length"]
    assert set(newest["features"][0]) == {
        "feature",
        "test",
        "statistic",
        "p_value",
        "p_value_adjusted",
        "effect_size_measure",
        "effect_size",
        "min_effect_size",
        "drift",
    }
    petal = next(f for f in newest["features"] if f["feature"] == "petal_length")
    assert petal["p_value"] <= petal["p_value_adjusted"] < 0.05
    assert petal["effect_size_measure"] == "ks_statistic"
    assert petal["effect_size"] >= petal["min_effect_size"] == 0.1
    assert reports[1]["status"] == "insufficient_data"


def test_api_filters_by_version_and_answers_404_for_unknown_model(iris_model, client_api):
    _production(iris_model)
    drift.drift_check(as_of=AS_OF)
    assert client_api.get("/api/v1/models/iris/drift?version=2").json()["results"] == []
    assert len(client_api.get("/api/v1/models/iris/drift?version=1").json()["results"]) == 1
    missing = client_api.get("/api/v1/models/nope/drift")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found"
    assert client_api.get("/api/v1/models/iris/drift?version=x").status_code == 400


def test_api_needs_authentication(iris_model, anon_api):
    assert anon_api.get("/api/v1/models/iris/drift").status_code == 401


def test_metrics_expose_latest_p_values_and_flags(iris_model, client):
    version = _production(iris_model)
    _serve(version, _rows(2, 300, shift={"petal_length": 1.0}))
    drift.drift_check(as_of=AS_OF)

    body = client.get("/metrics").content.decode()

    assert 'mlregistry_drift_detected{feature="petal_length",model="iris"} 1.0' in body
    assert 'mlregistry_drift_detected{feature="sepal_width",model="iris"} 0.0' in body
    assert 'mlregistry_drift_p_value{feature="sepal_width",model="iris"}' in body
    assert 'mlregistry_drift_p_value_adjusted{feature="sepal_width",model="iris"}' in body
    assert (
        'mlregistry_drift_effect_size{feature="petal_length",measure="ks_statistic",model="iris"}'
        in body
    )


def test_reports_written_before_adjustment_still_serialize_and_export(iris_model, client_api):
    version = _production(iris_model)
    DriftReport.objects.create(
        model_id=version.model_id,
        version=version,
        status=DriftStatus.DRIFT,
        window_start=AS_OF - timedelta(hours=24),
        window_end=AS_OF,
        threshold=0.05,
        features=[
            {
                "feature": "sepal_width",
                "test": "ks",
                "statistic": 0.2,
                "p_value": 0.01,
                "drift": True,
            }
        ],
        drifted_features=["sepal_width"],
    )

    [report] = client_api.get("/api/v1/models/iris/drift").json()["results"]

    assert report["features"][0]["p_value"] == 0.01
    assert report["features"][0]["p_value_adjusted"] is None
    assert report["features"][0]["effect_size"] is None


def test_report_drift_needs_the_adjusted_p_value_and_the_effect_floor(iris_model, settings):
    version = _production(iris_model)
    _serve(version, _rows(2, 300, shift={"petal_length": 1.0}))
    settings.DRIFT_MIN_KS_STATISTIC = 0.9

    [report] = drift.drift_check(as_of=AS_OF)

    petal = next(f for f in report.features if f["feature"] == "petal_length")
    assert petal["p_value_adjusted"] < 1e-6 and petal["min_effect_size"] == 0.9
    assert report.status == DriftStatus.OK and report.drifted_features == []


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DRIFT_P_VALUE_THRESHOLD", "0"),
        ("DRIFT_P_VALUE_THRESHOLD", "1.5"),
        ("DRIFT_P_VALUE_THRESHOLD", "nan"),
        ("DRIFT_MIN_KS_STATISTIC", "-0.1"),
        ("DRIFT_MIN_KS_STATISTIC", "2"),
        ("DRIFT_MIN_PSI", "inf"),
    ],
)
def test_drift_settings_out_of_range_stop_start_up(monkeypatch, variable, value):
    import subprocess
    import sys

    monkeypatch.setenv(variable, value)
    out = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"], capture_output=True, text=True
    )
    assert out.returncode != 0
    assert f"{variable} must be" in out.stderr


# --- retention ----------------------------------------------------------------------------------


def _report(version, *, days_old: int, status=DriftStatus.OK) -> int:
    window_end = AS_OF - timedelta(days=days_old)
    report = DriftReport.objects.create(
        model_id=version.model_id,
        version=version,
        status=status,
        window_start=window_end - timedelta(hours=24),
        window_end=window_end,
        threshold=0.05,
    )
    DriftReport.objects.filter(pk=report.pk).update(created_at=window_end)
    return report.pk


def test_old_drift_reports_are_pruned_except_each_versions_newest(iris_model):
    production = _production(iris_model)
    archived = factories.version_create(iris_model, c=0.5)
    old = [_report(production, days_old=d) for d in (400, 300)]
    recent = [_report(production, days_old=d) for d in (100, 1)]
    superseded = _report(archived, days_old=300)
    newest_tested = _report(archived, days_old=250, status=DriftStatus.DRIFT)
    newest = _report(archived, days_old=200, status=DriftStatus.INSUFFICIENT_DATA)
    cutoff = AS_OF - timedelta(days=180)

    assert drift.drift_reports_prune(older_than=cutoff, dry_run=True) == 3
    assert DriftReport.objects.count() == 7

    assert drift.drift_reports_prune(older_than=cutoff, batch_size=1) == 3

    # The archived version's last tested report stays: it is its last known drift status.
    assert set(DriftReport.objects.values_list("pk", flat=True)) == {
        *recent,
        newest_tested,
        newest,
    }
    assert not DriftReport.objects.filter(pk__in=[*old, superseded]).exists()


# --- where drift is shown: admin, overview, dashboard, chart -------------------------------------


def test_admin_pages_show_raw_and_adjusted_p_values(iris_model, admin_client):
    from django.urls import reverse

    version = _production(iris_model)
    _serve(version, _rows(2, 300, shift={"petal_length": 1.0}))
    [report] = drift.drift_check(as_of=AS_OF)
    petal = next(f for f in report.features if f["feature"] == "petal_length")

    change = admin_client.get(f"/admin/quality/driftreport/{report.pk}/change/")
    overview_page = admin_client.get(
        reverse("admin:mlregistry_registeredmodel_overview", args=[iris_model.pk])
    )
    dashboard = admin_client.get(reverse("admin:index"))

    for page in (change, overview_page):
        html = page.content.decode()
        assert page.status_code == 200
        assert "adjusted p-value" in html
        assert format(petal["p_value_adjusted"], ".4g") in html
        assert format(petal["p_value"], ".4g") in html
        assert "ks_statistic" in html
    html = dashboard.content.decode()
    assert "petal_length: p <span" in html
    assert ">" + format(petal["p_value"], ".4g") + "</span>" in html
    assert ">" + format(petal["p_value_adjusted"], ".4g") + "</span>" in html


def test_overview_chart_plots_the_adjusted_p_value_against_the_threshold(iris_model):
    from quality import overview

    version = _production(iris_model)
    _serve(version, _rows(2, 300, shift={"petal_length": 1.0}))
    [report] = drift.drift_check(as_of=AS_OF)

    series, threshold = overview.drift_series(model=iris_model)

    assert threshold == 0.05
    by_name = {f["feature"]: f for f in report.features}
    for name in NAMES:
        assert series[name] == [(AS_OF, by_name[name]["p_value_adjusted"])]
