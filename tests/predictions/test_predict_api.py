import io

import pandas as pd
import pytest
from django.test.utils import CaptureQueriesContext

from mlregistry import services
from mlregistry.artifacts import load_skops
from predictions.models import PredictionLog
from predictions.services import prediction_log_flush
from tests import factories
from tests.predictions.conftest import IRIS_ROW, OTHER_ROW, iris_estimator, iris_version, promote

pytestmark = pytest.mark.django_db


def _predict(api, body, name="iris", **extra):
    return api.post(f"/api/v1/models/{name}/predict", body, format="json", **extra)


def _expected(estimator, rows):
    frame = pd.DataFrame(rows)
    return estimator.predict(frame).tolist(), estimator.predict_proba(frame).tolist()


def test_single_row_equals_in_process_scikit_learn(client_api, iris_production):
    response = _predict(client_api, {"features": IRIS_ROW})
    assert response.status_code == 200, response.json()
    body = response.json()
    predictions, probabilities = _expected(iris_estimator(1.0), [IRIS_ROW])
    assert body["prediction"] == predictions[0]
    assert body["probabilities"] == {
        "0": probabilities[0][0],
        "1": probabilities[0][1],
        "2": probabilities[0][2],
    }
    assert body["confidence"] == max(probabilities[0])
    assert body["model"] == "iris" and body["model_version"] == 1
    assert body["stage"] == "production" and body["cached"] is False
    assert body["request_id"] == response["X-Request-ID"] and body["timestamp"]


def test_batch_equals_in_process_scikit_learn_in_order(client_api, iris_production):
    x, _ = factories.iris_frame()
    rows = x.to_dict(orient="records")
    response = _predict(client_api, {"instances": rows})
    assert response.status_code == 200, response.json()
    body = response.json()
    predictions, probabilities = _expected(iris_estimator(1.0), rows)
    assert [p["prediction"] for p in body["predictions"]] == predictions
    assert [list(p["probabilities"].values()) for p in body["predictions"]] == probabilities
    assert [p["confidence"] for p in body["predictions"]] == [max(p) for p in probabilities]
    assert body["model"] == "iris" and body["model_version"] == 1
    assert body["request_id"] == response["X-Request-ID"]


def test_regressor_answers_without_confidence_or_probabilities(client_api):
    from sklearn.datasets import load_diabetes

    model = factories.registered_model_create("diabetes", task="regression")
    version = services.model_version_create(
        model=model, artifact=io.BytesIO(factories.diabetes_regressor_bytes()), actor="tests"
    )
    promote(version)
    frame = load_diabetes(as_frame=True).data.head(3)
    rows = frame.to_dict(orient="records")
    single = _predict(client_api, {"features": rows[0]}, name="diabetes").json()
    expected = load_skops(factories.diabetes_regressor_bytes()).predict(frame).tolist()
    assert single["prediction"] == expected[0]
    assert single["confidence"] is None and "probabilities" not in single
    batch = _predict(client_api, {"instances": rows}, name="diabetes").json()
    assert [p["prediction"] for p in batch["predictions"]] == expected


def test_pinned_version_answers_from_that_version(client_api, iris_production, iris_model):
    iris_version(iris_model, c=0.01)
    response = client_api.post(
        "/api/v1/models/iris/versions/2/predict", {"features": IRIS_ROW}, format="json"
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["model_version"] == 2 and body["stage"] == "none"
    assert body["probabilities"] == dict(
        zip(["0", "1", "2"], _expected(iris_estimator(0.01), [IRIS_ROW])[1][0], strict=True)
    )


def test_archived_version_is_for_staff_only(client_api, staff_api, iris_production, iris_model):
    promote(iris_version(iris_model, c=0.01))  # archives v1
    url = "/api/v1/models/iris/versions/1/predict"
    assert client_api.post(url, {"features": IRIS_ROW}, format="json").status_code == 403
    response = staff_api.post(url, {"features": IRIS_ROW}, format="json")
    assert response.status_code == 200 and response.json()["stage"] == "archived"
    missing = client_api.post(
        "/api/v1/models/iris/versions/9/predict", {"features": IRIS_ROW}, format="json"
    )
    assert missing.status_code == 404


def test_seeds_alias_accepts_model_id_or_name(client_api, iris_production, iris_model):
    by_id = client_api.post(
        f"/api/v1/predict/{iris_model.pk}",
        {"features": IRIS_ROW, "model_id": iris_model.pk},
        format="json",
    )
    assert by_id.status_code == 200 and by_id.json()["model"] == "iris"
    by_name = client_api.post("/api/v1/predict/iris", {"features": IRIS_ROW}, format="json")
    assert by_name.status_code == 200
    assert client_api.post("/api/v1/predict/999", {}, format="json").status_code == 404
    assert client_api.post("/api/v1/predict/n%C3%B6t;a-slug", {}, format="json").status_code == 404


def test_token_is_required(anon_api, iris_production):
    response = _predict(anon_api, {"features": IRIS_ROW})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "not_authenticated"


def test_unknown_model_is_404(client_api, db):
    response = _predict(client_api, {"features": IRIS_ROW}, name="nope")
    assert response.status_code == 404
    assert "nope" in response.json()["error"]["message"]


def test_model_without_production_version_is_409(client_api, iris_model):
    iris_version(iris_model)
    response = _predict(client_api, {"features": IRIS_ROW})
    assert response.status_code == 409
    assert "no production version" in response.json()["error"]["message"]


def test_batch_over_the_limit_is_413_naming_the_limit(client_api, iris_production, settings):
    settings.PREDICTION_MAX_BATCH_ROWS = 5
    response = _predict(client_api, {"instances": [IRIS_ROW] * 6})
    assert response.status_code == 413
    assert "at most 5 rows" in response.json()["error"]["message"]
    assert _predict(client_api, {"instances": [IRIS_ROW] * 5}).status_code == 200


def test_cache_hit_then_promotion_never_serves_the_previous_version(
    client_api, iris_production, iris_model
):
    first = _predict(client_api, {"features": IRIS_ROW}).json()
    second = _predict(client_api, {"features": IRIS_ROW}).json()
    assert first["cached"] is False and second["cached"] is True
    assert second["probabilities"] == first["probabilities"]

    promote(iris_version(iris_model, c=0.01))
    after = _predict(client_api, {"features": IRIS_ROW}).json()
    assert after["model_version"] == 2 and after["cached"] is False
    expected = _expected(iris_estimator(0.01), [IRIS_ROW])[1][0]
    assert (
        list(after["probabilities"].values()) == expected != list(first["probabilities"].values())
    )

    # Rolling back serves v1 again, from v1's own cache entry (its key holds the version).
    with on_commit_run():
        services.model_version_rollback(model=iris_model, actor="tests")
    back = _predict(client_api, {"features": IRIS_ROW}).json()
    assert back["model_version"] == 1 and back["probabilities"] == first["probabilities"]


def on_commit_run():
    from django.test import TestCase

    return TestCase.captureOnCommitCallbacks(execute=True)


def test_steady_state_predict_makes_no_database_query(client_api, iris_production):
    _predict(client_api, {"features": IRIS_ROW})
    from django.db import connection

    with CaptureQueriesContext(connection) as queries:
        response = _predict(client_api, {"features": OTHER_ROW})
    assert response.status_code == 200
    # Token, routing and model all come from caches; the log row waits in the buffer.
    assert len(queries) == 0


def test_promotion_in_another_process_is_seen_within_the_local_ttl(
    client_api, iris_production, iris_model, settings
):
    import time

    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    settings.PREDICTION_ROUTING_LOCAL_TTL = 0.2
    assert _predict(client_api, {"features": IRIS_ROW}).json()["model_version"] == 1
    # Another process's promotion invalidates its own local-memory cache, not this one's:
    # here that is a transition whose on-commit invalidation does not run in this process.
    services.model_version_transition(
        version=iris_version(iris_model, c=0.01), stage="production", actor="job"
    )
    time.sleep(0.3)
    assert _predict(client_api, {"features": IRIS_ROW}).json()["model_version"] == 2


def test_prediction_log_records_what_was_served(client_api, iris_production):
    single = _predict(client_api, {"features": IRIS_ROW}, HTTP_X_CLIENT_ID="app-1").json()
    cached = _predict(client_api, {"features": IRIS_ROW}, HTTP_X_CLIENT_ID="app-1").json()
    batch = _predict(client_api, {"instances": [IRIS_ROW, OTHER_ROW]}).json()
    assert PredictionLog.objects.count() == 0  # buffered, not written on the request path
    assert prediction_log_flush() == 4
    row = PredictionLog.objects.get(request_id=single["request_id"])
    assert row.features == IRIS_ROW and row.output == single["prediction"]
    assert row.confidence == single["confidence"] and row.version == iris_production
    assert row.client_id == "app-1" and row.cached is False and row.latency_ms > 0
    assert PredictionLog.objects.get(request_id=cached["request_id"]).cached is True
    logged = PredictionLog.objects.filter(request_id=batch["request_id"]).order_by("row_index")
    assert [r.features for r in logged] == [IRIS_ROW, OTHER_ROW]
    assert [r.output for r in logged] == [p["prediction"] for p in batch["predictions"]]


def test_prediction_log_respects_sampling_and_feature_storage(
    client_api, iris_production, settings
):
    settings.PREDICTION_LOG_STORE_FEATURES = False
    body = _predict(client_api, {"features": IRIS_ROW}).json()
    settings.PREDICTION_LOG_SAMPLE_RATE = 0
    _predict(client_api, {"features": OTHER_ROW})
    prediction_log_flush()
    assert list(PredictionLog.objects.values_list("request_id", "features")) == [
        (body["request_id"], None)
    ]
    settings.PREDICTION_LOG_SAMPLE_RATE = 0.5
    settings.PREDICTION_LOG_BATCH_MAX_ROWS = 1000
    _predict(client_api, {"instances": [IRIS_ROW] * 400})
    assert 100 < prediction_log_flush() < 300


def test_metrics_count_served_predictions(client_api, iris_production):
    _predict(client_api, {"features": IRIS_ROW})
    text = client_api.get("/metrics").content.decode()
    assert 'mlregistry_predictions_total{cached="false",model="iris",version="1"}' in text
    assert "mlregistry_prediction_latency_seconds_bucket" in text
    assert "mlregistry_model_loads_total" in text


def test_forest_answers_equal_scikit_learn_predict_and_predict_proba(client_api, settings):
    import skops.io as sio
    from sklearn.ensemble import RandomForestClassifier

    settings.SKOPS_TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]
    x, y = factories.iris_frame()
    forest = RandomForestClassifier(n_estimators=15, random_state=0).fit(x, y)
    model = factories.registered_model_create("forest")
    version = services.model_version_create(
        model=model, artifact=io.BytesIO(sio.dumps(forest)), actor="tests"
    )
    promote(version)
    rows = x.to_dict(orient="records")
    body = client_api.post(
        "/api/v1/models/forest/predict", {"instances": rows}, format="json"
    ).json()
    assert [p["prediction"] for p in body["predictions"]] == forest.predict(x).tolist()
    assert [list(p["probabilities"].values()) for p in body["predictions"]] == (
        forest.predict_proba(x).tolist()
    )


def test_body_over_the_upload_limit_is_413(client_api, iris_production, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    response = _predict(client_api, {"instances": [IRIS_ROW] * 40})
    assert response.status_code == 413
    assert "2048 bytes" in response.json()["error"]["message"]
