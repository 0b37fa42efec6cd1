import io
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from mlregistry import services
from predictions.logbuffer import LogRow, PredictionLogBuffer
from predictions.metrics import PREDICTION_LOG_DROPPED
from predictions.models import PredictionLog
from predictions.services import prediction_log_flush, prediction_log_prune
from tests import factories
from tests.predictions.conftest import IRIS_ROW, OTHER_ROW, promote

pytestmark = pytest.mark.django_db

SETOSA = IRIS_ROW  # class 0
VERSICOLOR = {"sepal_length": 6.0, "sepal_width": 2.9, "petal_length": 4.5, "petal_width": 1.5}


def _serve(api, row):
    response = api.post("/api/v1/models/iris/predict", {"features": row}, format="json")
    assert response.status_code == 200
    return response.json()


def _feedback(api, request_id, actual, **extra):
    return api.post(
        f"/api/v1/predictions/{request_id}/feedback", {"actual": actual, **extra}, format="json"
    )


def test_feedback_gives_per_version_online_accuracy(client_api, staff_api, iris_production):
    served = [_serve(client_api, row) for row in (SETOSA, SETOSA, VERSICOLOR, VERSICOLOR)]
    assert [s["prediction"] for s in served] == [0, 0, 1, 1]
    actuals = [0, 0, 1, 2]  # the last prediction was wrong
    for body, actual in zip(served, actuals, strict=True):
        response = _feedback(client_api, body["request_id"], actual)
        assert response.status_code == 200, response.json()
        assert response.json() == {"request_id": body["request_id"], "rows": 1}
    detail = staff_api.get("/api/v1/models/iris/versions/1/").json()
    assert detail["online_metrics"] == {"feedback_count": 4, "accuracy": 0.75}
    row = PredictionLog.objects.get(request_id=served[3]["request_id"])
    assert row.actual == 2 and row.feedback_at is not None


def test_feedback_for_one_batch_row(client_api, iris_production):
    batch = client_api.post(
        "/api/v1/models/iris/predict", {"instances": [SETOSA, VERSICOLOR]}, format="json"
    ).json()
    response = _feedback(client_api, batch["request_id"], 1, row_index=1)
    assert response.json()["rows"] == 1
    rows = PredictionLog.objects.filter(request_id=batch["request_id"]).order_by("row_index")
    assert [r.actual for r in rows] == [None, 1]


def test_feedback_errors(client_api, iris_production):
    assert _feedback(client_api, "nope", 0).status_code == 404
    body = _serve(client_api, SETOSA)
    response = _feedback(client_api, body["request_id"], "setosa")
    assert response.status_code == 400 and "actual" in response.json()["error"]["fields"]
    assert _feedback(client_api, body["request_id"], 0, row_index=3).status_code == 404


def test_a_client_restricted_to_other_models_cannot_give_feedback_here(
    client_api, iris_production, django_capture_on_commit_callbacks
):
    from django.contrib.auth.models import User

    from mlregistry.models import ApiClientPolicy

    body = _serve(client_api, SETOSA)
    other = factories.registered_model_create("other")
    outsider = factories.user_create("outsider")
    with django_capture_on_commit_callbacks(execute=True):
        policy = ApiClientPolicy.objects.create(user=User.objects.get(username="outsider"))
        policy.allowed_models.set([other])
    outsider_api = type(client_api)()
    outsider_api.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.token_create(outsider)}")
    response = _feedback(outsider_api, body["request_id"], 0)
    assert response.status_code == 404
    assert PredictionLog.objects.get(request_id=body["request_id"]).actual is None


def test_regression_feedback_gives_mae(client_api, staff_api):
    from sklearn.datasets import load_diabetes

    model = factories.registered_model_create("diabetes", task="regression")
    version = services.model_version_create(
        model=model, artifact=io.BytesIO(factories.diabetes_regressor_bytes()), actor="tests"
    )
    promote(version)
    row = load_diabetes(as_frame=True).data.head(1).to_dict(orient="records")[0]
    body = client_api.post(
        "/api/v1/models/diabetes/predict", {"features": row}, format="json"
    ).json()
    assert _feedback(client_api, body["request_id"], "high").status_code == 400
    assert _feedback(client_api, body["request_id"], body["prediction"] + 10).status_code == 200
    metrics = staff_api.get("/api/v1/models/diabetes/versions/1/").json()["online_metrics"]
    assert metrics["feedback_count"] == 1 and metrics["mae"] == pytest.approx(10)


def test_prune_deletes_only_rows_older_than_the_cutoff(client_api, iris_production):
    for row in (SETOSA, OTHER_ROW, VERSICOLOR):
        _serve(client_api, row)
    prediction_log_flush()
    old = timezone.now() - timedelta(days=40)
    PredictionLog.objects.filter(
        pk__in=PredictionLog.objects.order_by("id").values_list("id", flat=True)[:2]
    ).update(created_at=old)
    cutoff = timezone.now() - timedelta(days=30)
    assert prediction_log_prune(older_than=cutoff, batch_size=1) == 2
    assert PredictionLog.objects.count() == 1


def _row(version, index=0, served_to_id=None):
    return LogRow(
        f"r{index}",
        0,
        version.model_id,
        version.pk,
        ("a",),
        [1.5],
        0,
        1.0,
        1.0,
        False,
        "",
        served_to_id,
        timezone.now(),
    )


def test_full_buffer_drops_and_counts_rows(iris_production, settings):
    settings.PREDICTION_LOG_BUFFER_MAX = 2
    buffer = PredictionLogBuffer()
    dropped = PREDICTION_LOG_DROPPED._value.get()
    buffer.add([_row(iris_production, i) for i in range(3)])
    assert len(buffer) == 2 and PREDICTION_LOG_DROPPED._value.get() == dropped + 1


def test_buffer_flushes_inline_when_full_without_a_flusher(iris_production, settings):
    settings.PREDICTION_LOG_FLUSH_ROWS = 2
    buffer = PredictionLogBuffer()
    buffer.add([_row(iris_production, 0)])
    assert PredictionLog.objects.count() == 0
    buffer.add([_row(iris_production, 1)])
    assert PredictionLog.objects.count() == 2 and len(buffer) == 0


def test_duplicate_request_ids_do_not_lose_the_flush(iris_production, client_user):
    buffer = PredictionLogBuffer()
    rows = [_row(iris_production, i, served_to_id=client_user.pk) for i in (0, 0, 1)]
    buffer.add(rows)
    buffer.flush()
    assert PredictionLog.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_background_flusher_writes_without_a_request_waiting(settings):
    # transaction=True: the flusher thread has its own connection and must see committed rows.
    settings.PREDICTION_LOG_FLUSH_SECONDS = 0.05
    model = factories.registered_model_create("iris")
    version = factories.version_create(model)
    buffer = PredictionLogBuffer()
    buffer.add([_row(version, 0)])
    deadline = time.monotonic() + 5
    while PredictionLog.objects.count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert PredictionLog.objects.count() == 1
    buffer.add([_row(version, 1)])
    buffer.stop()  # flushes what is left, then the thread ends
    assert PredictionLog.objects.count() == 2 and not buffer._thread.is_alive()


def test_large_batches_log_a_random_subset_of_rows(client_api, iris_production, settings):
    settings.PREDICTION_LOG_BATCH_MAX_ROWS = 10
    rows = [SETOSA, VERSICOLOR] * 20
    body = client_api.post("/api/v1/models/iris/predict", {"instances": rows}, format="json").json()
    assert prediction_log_flush() == 10
    logged = PredictionLog.objects.filter(request_id=body["request_id"])
    for row in logged:
        assert row.features == rows[row.row_index]
        assert row.output == body["predictions"][row.row_index]["prediction"]
