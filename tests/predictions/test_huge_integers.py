"""An integer too large for a float (JSON and CSV carry integers of any length) is a 400 naming
the field on every predict route, never a 500 (OverflowError in math.isfinite or numpy)."""

from __future__ import annotations

import pytest

from predictions.validation import actual_refusal

pytestmark = pytest.mark.django_db

BIG = "9" * 400
NAMES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
ROW = '{"sepal_length": %s, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}'
COLUMNS = '["sepal_length", "sepal_width", "petal_length", "petal_width"]'

JSON_CASES = {
    "predict features": ("/api/v1/models/iris/predict", '{"features": %s}' % (ROW % BIG)),
    "predict instances": (
        "/api/v1/models/iris/predict",
        '{"instances": [%s]}' % (ROW % ("-" + BIG)),
    ),
    "pinned predict": ("/api/v1/models/iris/versions/1/predict", '{"features": %s}' % (ROW % BIG)),
    "mlflow dataframe_split": (
        "/api/v1/models/iris/invocations",
        '{"dataframe_split": {"columns": COLUMNS, "data": [[BIG, 1, 1, 1]]}}'.replace(
            "COLUMNS", COLUMNS
        ).replace("BIG", BIG),
    ),
    "mlflow dataframe_records": (
        "/api/v1/models/iris/invocations",
        '{"dataframe_records": [%s]}' % (ROW % BIG),
    ),
    "mlflow inputs columns": (
        "/api/v1/models/iris/invocations",
        '{"inputs": {"sepal_length": [%s], "sepal_width": [1], "petal_length": [1], '
        '"petal_width": [1]}}'.replace("[%s]", f"[{BIG}]"),
    ),
}


@pytest.mark.parametrize("case", list(JSON_CASES))
def test_an_integer_beyond_float_range_is_a_400_naming_the_field(client_api, iris_production, case):
    url, body = JSON_CASES[case]
    response = client_api.post(url, body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert any("sepal_length" in name for name in response.json()["error"]["fields"])


def test_an_integer_beyond_float_range_in_csv_is_a_400(client_api, iris_production):
    csv = ",".join(NAMES) + f"\n{BIG},3.5,1.4,0.2\n"
    response = client_api.post("/api/v1/models/iris/invocations", csv, content_type="text/csv")
    assert response.status_code == 400, response.content
    assert "sepal_length" in response.json()["error"]["fields"]


def test_an_actual_beyond_float_range_is_refused_not_raised():
    huge = int(BIG)
    assert actual_refusal(huge, classes=None, regression=True) == "must be a finite number"
    assert actual_refusal(-huge, classes=None, regression=False) == "must be a finite number"
    assert actual_refusal(huge, classes=[0, 1, 2], regression=False).startswith("must be one")
