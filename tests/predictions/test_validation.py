import pytest

from mlregistry import services
from predictions.models import PredictionLog
from predictions.services import prediction_log_flush
from tests.predictions.conftest import IRIS_ROW, iris_version, promote

pytestmark = pytest.mark.django_db

SCHEMA = [
    {"name": "sepal_length", "type": "float", "min": 0, "max": 10},
    {"name": "sepal_width", "type": "float", "min": 0},
    {"name": "petal_length", "type": "float", "max": 10},
    {"name": "petal_width", "type": "float"},
]


@pytest.fixture
def ranged_iris(iris_model):
    version = iris_version(iris_model, input_schema=SCHEMA)
    promote(version)
    return version


def _predict(api, body):
    return api.post("/api/v1/models/iris/predict", body, format="json")


def _error(response):
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["type"] in {"validation_error", "parse_error"}
    assert error["request_id"] == response["X-Request-ID"]
    return error


def test_missing_feature_is_named(client_api, ranged_iris):
    row = {k: v for k, v in IRIS_ROW.items() if k != "petal_width"}
    assert _error(_predict(client_api, {"features": row}))["fields"] == {
        "petal_width": ["required feature is missing"]
    }


def test_a_body_with_both_a_row_and_a_batch_is_refused(client_api, ranged_iris):
    for path in ("/api/v1/models/iris/predict", "/api/v1/models/iris/versions/1/predict"):
        body = {"features": IRIS_ROW, "instances": [IRIS_ROW, IRIS_ROW]}
        response = client_api.post(path, body, format="json")
        assert "features" in _error(response)["fields"]


def test_unknown_feature_is_named(client_api, ranged_iris):
    fields = _error(_predict(client_api, {"features": {**IRIS_ROW, "colour": 1}}))["fields"]
    assert fields == {"colour": ["unknown feature"]}


def test_wrong_types_are_named(client_api, ranged_iris):
    row = {**IRIS_ROW, "sepal_length": "5.1", "petal_width": True, "sepal_width": None}
    fields = _error(_predict(client_api, {"features": row}))["fields"]
    assert fields == {
        "sepal_length": ["must be a number"],
        "sepal_width": ["must not be null"],
        "petal_width": ["must be a number"],
    }


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_named(client_api, ranged_iris, literal):
    body = '{"features": {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, '
    body += f'"petal_width": {literal}}}}}'
    response = client_api.post("/api/v1/models/iris/predict", body, content_type="application/json")
    assert _error(response)["fields"] == {
        "petal_width": ["must be a finite number (not NaN or Infinity)"]
    }


def test_out_of_range_values_are_named(client_api, ranged_iris):
    row = {**IRIS_ROW, "sepal_length": 11, "sepal_width": -1, "petal_length": 10.5}
    fields = _error(_predict(client_api, {"features": row}))["fields"]
    assert fields == {
        "sepal_length": ["must be between 0 and 10"],
        "sepal_width": ["must be at least 0"],
        "petal_length": ["must be at most 10"],
    }


def test_batch_errors_name_the_row_index(client_api, ranged_iris):
    rows = [IRIS_ROW, {**IRIS_ROW, "sepal_length": 99}, "not a row", {"petal_width": 1}]
    fields = _error(_predict(client_api, {"instances": rows}))["fields"]
    assert fields["instances[1].sepal_length"] == ["must be between 0 and 10"]
    assert fields["instances[2]"] == ["must be an object of feature values"]
    assert fields["instances[3].sepal_length"] == ["required feature is missing"]
    assert "instances[0].sepal_length" not in fields


def test_malformed_json_is_400(client_api, ranged_iris):
    response = client_api.post(
        "/api/v1/models/iris/predict", '{"features": {', content_type="application/json"
    )
    assert _error(response)["type"] == "parse_error"


@pytest.mark.parametrize(
    "body, field",
    [
        ([1, 2], "non_field_errors"),
        ({"rows": []}, "features"),
        ({"instances": []}, "instances"),
        ({"instances": {"a": 1}}, "instances"),
        ({"features": [1, 2, 3, 4]}, "features"),
    ],
)
def test_wrong_body_shapes_are_400(client_api, ranged_iris, body, field):
    assert field in _error(_predict(client_api, body))["fields"]


def test_integer_boolean_and_string_features(client_api, iris_model):
    # A schema with every type, served through a pipeline that accepts them as a DataFrame.
    import io

    import skops.io as sio
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    from tests import factories

    x, y = factories.iris_frame()
    frame = x.assign(
        count=(x["petal_length"] * 2).round().astype(int),
        flag=x["petal_width"] > 1,
        colour=["red" if v > 1 else "blue" for v in x["petal_width"]],
    )
    pipeline = make_pipeline(
        make_column_transformer((OneHotEncoder(), ["colour"]), remainder="passthrough"),
        LogisticRegression(max_iter=1000),
    ).fit(frame, y)
    schema = [
        *[{"name": c, "type": "float"} for c in x.columns],
        {"name": "count", "type": "integer", "min": 0},
        {"name": "flag", "type": "boolean"},
        {"name": "colour", "type": "string"},
    ]
    model = factories.registered_model_create("mixed")
    data = sio.dumps(pipeline)
    trusted = sio.get_untrusted_types(data=data)
    with pytest.MonkeyPatch.context() as patch:
        # The default trusted list has no pandas/ColumnTransformer helpers; trust what this
        # pipeline needs, as an operator would through SKOPS_TRUSTED_TYPES.
        from django.conf import settings

        patch.setattr(settings, "SKOPS_TRUSTED_TYPES", trusted)
        version = services.model_version_create(
            model=model, artifact=io.BytesIO(data), actor="tests", input_schema=schema
        )
        promote(version)
        row = {**IRIS_ROW, "count": 3, "flag": False, "colour": "blue"}
        response = client_api.post("/api/v1/models/mixed/predict", {"features": row}, format="json")
        assert response.status_code == 200, response.json()
        import pandas as pd

        assert response.json()["prediction"] == pipeline.predict(pd.DataFrame([row]))[0]
        bad = {**IRIS_ROW, "count": 2.5, "flag": "no", "colour": 3}
        fields = _error(
            client_api.post("/api/v1/models/mixed/predict", {"features": bad}, format="json")
        )["fields"]
        assert fields == {
            "count": ["must be an integer"],
            "flag": ["must be true or false"],
            "colour": ["must be a string"],
        }
        assert (
            client_api.post(
                "/api/v1/models/mixed/predict", {"features": {**row, "count": 3.0}}, format="json"
            ).status_code
            == 200
        )
        assert _error(
            client_api.post(
                "/api/v1/models/mixed/predict", {"features": {**row, "count": -1}}, format="json"
            )
        )["fields"] == {"count": ["must be at least 0"]}


def test_failed_validation_logs_nothing_and_counts_a_metric(client_api, ranged_iris):
    from predictions.metrics import VALIDATION_FAILURES

    before = VALIDATION_FAILURES.labels(model="iris")._value.get()
    _predict(client_api, {"features": {"colour": 1}})
    client_api.post("/api/v1/models/iris/predict", "{", content_type="application/json")
    assert prediction_log_flush() == 0 and PredictionLog.objects.count() == 0
    assert VALIDATION_FAILURES.labels(model="iris")._value.get() == before + 2


def test_many_bad_rows_report_a_bounded_number_of_fields(client_api, ranged_iris):
    rows = [{"x": 1}] * 60
    error = _error(_predict(client_api, {"instances": rows}))
    assert len(error["fields"]) == 100 and "invalid fields" in error["message"]
