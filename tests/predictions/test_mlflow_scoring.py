"""MLflow's scoring protocol at .../invocations: the payloads MLflow's own helpers and docs
produce, answered as `mlflow models serve` answers for a scikit-learn model, through the native
serving path (auth, routing, splits, validation, cache, log, throttle)."""

import io

import orjson
import pandas as pd
import pytest

from mlregistry import services
from mlregistry.artifacts import load_skops
from predictions.models import PredictionLog
from predictions.services import prediction_log_flush, traffic_split_set
from tests import factories
from tests.predictions.conftest import IRIS_ROW, iris_estimator, iris_version, promote

pytestmark = pytest.mark.django_db

URL = "/api/v1/models/iris/invocations"


def _frame(rows=5):
    x, _ = factories.iris_frame()
    return x.iloc[::30].head(rows).reset_index(drop=True)


def _invoke(api, payload, url=URL, **extra):
    return api.post(url, payload, format="json", **extra)


def _expected(frame):
    return iris_estimator(1.0).predict(frame).tolist()


@pytest.mark.parametrize(
    "make",
    [
        # What mlflow's own clients send (mlflow.pyfunc's serving payloads come from these).
        lambda f: {"dataframe_split": f.to_dict(orient="split")},
        lambda f: {"dataframe_split": f.to_dict(orient="tight")},
        lambda f: {"dataframe_split": {"columns": list(f.columns), "data": f.values.tolist()}},
        lambda f: {"dataframe_records": f.to_dict(orient="records")},
        lambda f: {"instances": f.to_dict(orient="records")},
        lambda f: {"inputs": f.to_dict(orient="records")},
        lambda f: {"inputs": f.to_dict(orient="list")},
        lambda f: {"inputs": f.to_dict(orient="list"), "params": {"unused": 1}},
    ],
    ids=[
        "split",
        "split-tight",
        "split-plain",
        "records",
        "instances",
        "inputs",
        "columns",
        "params",
    ],
)
@pytest.mark.parametrize("rows", [1, 5])
def test_json_formats_answer_like_mlflow_serve(client_api, iris_production, make, rows):
    frame = _frame(rows)
    response = _invoke(client_api, make(frame))
    assert response.status_code == 200, response.json()
    assert response["Content-Type"].startswith("application/json")
    assert response.json() == {"predictions": _expected(frame)}


def test_csv_with_a_header_row(client_api, iris_production):
    frame = _frame(5)
    response = client_api.post(URL, frame.to_csv(index=False), content_type="text/csv")
    assert response.status_code == 200, response.json()
    assert response.json() == {"predictions": _expected(frame)}
    charset = client_api.post(
        URL, frame.to_csv(index=False), content_type="text/csv; charset=UTF-8"
    )
    assert charset.json() == {"predictions": _expected(frame)}


def test_regressor_answers_values(client_api):
    from sklearn.datasets import load_diabetes

    model = factories.registered_model_create("diabetes", task="regression")
    version = services.model_version_create(
        model=model, artifact=io.BytesIO(factories.diabetes_regressor_bytes()), actor="tests"
    )
    promote(version)
    frame = load_diabetes(as_frame=True).data.head(4)
    expected = load_skops(factories.diabetes_regressor_bytes()).predict(frame).tolist()
    url = "/api/v1/models/diabetes/invocations"
    split = _invoke(client_api, {"dataframe_split": frame.to_dict(orient="split")}, url)
    assert split.json() == {"predictions": expected}
    csv = client_api.post(url, frame.to_csv(index=False), content_type="text/csv")
    assert csv.json() == {"predictions": expected}


@pytest.mark.parametrize(
    "payload",
    [
        {"features": IRIS_ROW},  # the native format is not MLflow's
        {"dataframe_records": [IRIS_ROW], "instances": [IRIS_ROW]},
        [IRIS_ROW],
        {"dataframe_split": {"data": [[1, 2, 3, 4]]}},
        {"dataframe_split": {"columns": ["sepal_length"] * 4, "data": [[1, 2, 3, 4]]}},
        {"dataframe_split": {"columns": list(IRIS_ROW), "data": [[1, 2, 3]]}},
        {"dataframe_records": {"sepal_length": 1}},
        {"instances": [[5.1, 3.5, 1.4, 0.2]]},
        {"inputs": {"sepal_length": [1, 2], "sepal_width": [1]}},
    ],
)
def test_malformed_requests_are_400_bad_request(client_api, iris_production, payload):
    response = _invoke(client_api, payload)
    assert response.status_code == 400, response.json()
    body = response.json()
    assert body["error_code"] == "BAD_REQUEST" and body["message"]
    assert body["error"]["message"] == body["message"]


def test_schema_errors_name_the_field(client_api, iris_production):
    row = {**IRIS_ROW, "petal_width": "wide"}
    del row["sepal_length"]
    response = _invoke(client_api, {"dataframe_records": [row, IRIS_ROW]})
    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert set(fields) == {"instances[0].sepal_length", "instances[0].petal_width"}


def test_malformed_json_and_csv_are_400(client_api, iris_production):
    bad_json = client_api.post(URL, b"{not json", content_type="application/json")
    assert bad_json.status_code == 400 and bad_json.json()["error_code"] == "BAD_REQUEST"
    bad_csv = client_api.post(URL, b'a,"b\n1', content_type="text/csv")
    assert bad_csv.status_code == 400 and bad_csv.json()["error_code"] == "BAD_REQUEST"


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/json; charset=latin-1", "application/json; format=pandas-split"],
)
def test_other_media_types_are_415_as_mlflow_answers(client_api, iris_production, content_type):
    response = client_api.post(URL, b'{"inputs": []}', content_type=content_type)
    assert response.status_code == 415
    assert response.json()["error_code"] == "BAD_REQUEST"


def test_media_types_match_case_insensitively(client_api, iris_production):
    payload = b'{"dataframe_records": [%s]}' % orjson.dumps(IRIS_ROW)
    response = client_api.post(URL, payload, content_type="Application/JSON; Charset=utf-8")
    assert response.status_code == 200, response.json()
    assert response.json() == {"predictions": _expected(pd.DataFrame([IRIS_ROW]))}


def test_authentication_and_access_are_the_native_ones(anon_api, client_api, iris_production):
    payload = {"dataframe_records": [IRIS_ROW]}
    assert _invoke(anon_api, payload).status_code == 401
    assert _invoke(anon_api, payload, HTTP_AUTHORIZATION="Bearer nope").status_code == 401
    missing = _invoke(client_api, payload, "/api/v1/models/nope/invocations")
    assert missing.status_code == 404
    assert missing.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"


def test_without_production_is_409_and_a_pinned_version_answers(client_api, iris_model):
    iris_version(iris_model, c=1.0)
    payload = {"dataframe_records": [IRIS_ROW]}
    assert _invoke(client_api, payload).status_code == 409
    pinned = _invoke(client_api, payload, "/api/v1/models/iris/versions/1/invocations")
    assert pinned.json() == {"predictions": _expected(pd.DataFrame([IRIS_ROW]))}
    absent = _invoke(client_api, payload, "/api/v1/models/iris/versions/9/invocations")
    assert absent.status_code == 404


def test_served_rows_are_logged_cached_and_follow_the_split(client_api, iris_production, settings):
    settings.PREDICTION_LOG_SAMPLE_RATE = 1.0
    payload = {"dataframe_split": pd.DataFrame([IRIS_ROW]).to_dict(orient="split")}
    first = _invoke(client_api, payload)
    second = _invoke(client_api, payload)
    assert first.json() == second.json()
    prediction_log_flush()
    logged = PredictionLog.objects.filter(
        request_id__in=[first["X-Request-ID"], second["X-Request-ID"]]
    ).order_by("id")
    assert [row.cached for row in logged] == [False, True]
    assert logged[0].output == first.json()["predictions"][0]

    challenger = iris_version(iris_production.model, c=0.01)
    promote(challenger, "staging")
    from django.test import TestCase

    with TestCase.captureOnCommitCallbacks(execute=True):
        traffic_split_set(
            model=iris_production.model,
            splits=[{"version": 1, "weight": 0}, {"version": 2, "weight": 100}],
            actor="tests",
        )
    answered = _invoke(client_api, {"dataframe_records": [IRIS_ROW, IRIS_ROW]})
    prediction_log_flush()
    versions = PredictionLog.objects.filter(request_id=answered["X-Request-ID"]).values_list(
        "version__version", flat=True
    )
    assert set(versions) == {2}


def test_the_predict_throttle_counts_invocations(
    client_api, iris_production, settings, throttle_window_room
):
    rates = {k: None for k in settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]}
    rates["predict"] = "2/min"
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    throttle_window_room(60)
    payload = {"dataframe_records": [IRIS_ROW]}
    statuses = [_invoke(client_api, payload).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    limited = _invoke(client_api, payload)
    assert limited["Retry-After"] and limited.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
