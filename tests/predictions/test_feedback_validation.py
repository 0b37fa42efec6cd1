"""Feedback is checked against what the version can answer, with the typing rules of input
features: an equal number is the same class, a boolean is not a number."""

import io
from importlib import import_module

import pytest
from django.apps import apps

from mlregistry import services
from predictions.models import PredictionLog
from predictions.services import prediction_log_flush
from predictions.validation import actual_refusal
from tests import factories
from tests.predictions.conftest import IRIS_ROW, promote
from tests.predictions.test_feedback_and_log import SETOSA, VERSICOLOR, _feedback, _serve

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("actual", [True, False, "1", "setosa", 3, -1, 1.5, [1], {"a": 1}])
def test_a_classifier_refuses_what_is_not_one_of_its_classes(client_api, iris_production, actual):
    body = _serve(client_api, SETOSA)
    response = _feedback(client_api, body["request_id"], actual)
    assert response.status_code == 400, (actual, response.json())
    error = response.json()["error"]
    assert "actual" in error["fields"] and "[0, 1, 2]" in error["fields"]["actual"][0]
    assert PredictionLog.objects.get(request_id=body["request_id"]).actual is None


def test_an_equal_number_is_the_same_class_and_accuracy_counts_it(
    client_api, staff_api, iris_production
):
    served = [_serve(client_api, row) for row in (SETOSA, SETOSA, VERSICOLOR, VERSICOLOR)]
    assert [s["prediction"] for s in served] == [0, 0, 1, 1]
    for body, actual in zip(served, [0.0, 0, 1.0, 2], strict=True):
        response = _feedback(client_api, body["request_id"], actual)
        assert response.status_code == 200, response.json()
    stored = [PredictionLog.objects.get(request_id=s["request_id"]).actual for s in served]
    assert stored == [0, 0, 1, 2] and all(type(v) is int for v in stored)
    detail = staff_api.get("/api/v1/models/iris/versions/1/").json()
    assert detail["online_metrics"] == {"feedback_count": 4, "accuracy": 0.75}


def _diabetes(client_api):
    from sklearn.datasets import load_diabetes

    model = factories.registered_model_create("diabetes", task="regression")
    version = services.model_version_create(
        model=model, artifact=io.BytesIO(factories.diabetes_regressor_bytes()), actor="tests"
    )
    promote(version)
    row = load_diabetes(as_frame=True).data.iloc[0].to_dict()
    response = client_api.post("/api/v1/models/diabetes/predict", {"features": row}, format="json")
    assert response.status_code == 200
    return response.json()


@pytest.mark.parametrize("actual", ["true", '"151.0"', "[1.0]", "1e400", "-1e999"])
def test_a_regressor_refuses_what_is_not_a_finite_number(client_api, actual):
    body = _diabetes(client_api)
    response = client_api.post(
        f"/api/v1/predictions/{body['request_id']}/feedback",
        data=f'{{"actual": {actual}}}'.encode(),
        content_type="application/json",
    )
    assert response.status_code == 400, (actual, response.content)


def test_a_regressor_takes_a_finite_number(client_api, staff_api):
    body = _diabetes(client_api)
    response = _feedback(client_api, body["request_id"], 151)
    assert response.status_code == 200
    metrics = staff_api.get("/api/v1/models/diabetes/versions/1/").json()["online_metrics"]
    assert metrics["feedback_count"] == 1 and metrics["mae"] is not None


def test_the_rule_on_other_kinds_of_classes():
    assert actual_refusal("setosa", classes=["setosa", "virginica"], regression=False) is None
    assert actual_refusal(1, classes=["1", "2"], regression=False) is not None
    assert actual_refusal(True, classes=[False, True], regression=False) is None
    assert actual_refusal(1, classes=[False, True], regression=False) is not None
    assert actual_refusal(2.0, classes=[0.5, 2.0], regression=False) is None
    assert actual_refusal("x", classes=None, regression=False) is None
    assert actual_refusal(float("nan"), classes=None, regression=False) is not None
    assert actual_refusal(float("inf"), classes=None, regression=True) is not None
    assert actual_refusal(False, classes=None, regression=True) is not None


def test_the_migration_reports_stored_feedback_that_would_now_be_refused(
    client_api, iris_production, capsys
):
    served = [_serve(client_api, IRIS_ROW) for _ in range(3)]
    prediction_log_flush()
    for body, actual in zip(served, [True, 1, "7"], strict=True):
        PredictionLog.objects.filter(request_id=body["request_id"]).update(actual=actual)
    PredictionLog.objects.update(feedback_at="2026-01-01T00:00:00Z")
    migration = import_module("predictions.migrations.0007_report_refused_feedback")
    migration.report_refused_feedback(apps, None)
    out = capsys.readouterr().out
    assert "2 stored feedback row(s)" in out
    assert f"{{{iris_production.pk}: 2}}" in out
    # Reported, not dropped or changed.
    assert sorted(map(repr, PredictionLog.objects.values_list("actual", flat=True))) == sorted(
        ["True", "1", "'7'"]
    )
