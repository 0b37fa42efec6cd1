"""A model output that is not finite (NaN, infinity) is never served, cached, logged as
served or observed by a metric: the request is a 422 naming the rows (a batch fails whole)."""

import io
from dataclasses import replace

import numpy as np
import pytest
from django.core.cache import cache
from prometheus_client import REGISTRY

from mlregistry import services
from predictions import services as prediction_services
from predictions.loader import model_cache
from predictions.logbuffer import prediction_log_buffer
from predictions.models import PredictionLog
from predictions.serving import non_finite_rows
from tests import factories
from tests.predictions.conftest import IRIS_ROW, promote

# numpy warns of the overflow these inputs cause on purpose.
pytestmark = [pytest.mark.django_db, pytest.mark.filterwarnings("ignore::RuntimeWarning")]

# Large but finite and inside the (unbounded) schema: the scaler and the linear model
# overflow to infinity, and softmax or the regression's sum turns that into NaN.
HUGE = {name: 1e308 for name in IRIS_ROW}


def _sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _predict(api, body, name="iris"):
    return api.post(f"/api/v1/models/{name}/predict", body, format="json")


def _assert_nothing_served(served_rows: int):
    """Only the rows served with a finite answer reach the prediction log."""
    assert len(prediction_log_buffer) == served_rows
    prediction_services.prediction_log_flush()
    assert PredictionLog.objects.count() == served_rows


def test_a_non_finite_classifier_output_is_422_and_leaves_no_trace(client_api, iris_production):
    confidence_sum = _sample("mlregistry_prediction_confidence_sum", model="iris", version="1")
    served = _sample("mlregistry_predictions_total", model="iris", version="1", cached="false")
    response = _predict(client_api, {"features": HUGE})
    assert response.status_code == 422, response.json()
    error = response.json()["error"]
    assert error["type"] == "model_output_invalid"
    assert "features" in error["fields"] and "not a finite number" in error["message"]
    # Not cached: the same row asked again is computed (and refused) again, never a hit.
    assert not any(key.startswith("pred:") for key in _cache_keys())
    assert _predict(client_api, {"features": HUGE}).status_code == 422
    _assert_nothing_served(0)
    after = _sample("mlregistry_prediction_confidence_sum", model="iris", version="1")
    assert after == confidence_sum and np.isfinite(after)
    assert served == _sample(
        "mlregistry_predictions_total", model="iris", version="1", cached="false"
    )
    refused = _sample("mlregistry_model_output_invalid_total", model="iris", version="1")
    assert refused >= 2
    # A plain row still answers, with finite numbers, and the histogram stays finite.
    fine = _predict(client_api, {"features": IRIS_ROW})
    assert fine.status_code == 200 and np.isfinite(fine.json()["confidence"])
    assert np.isfinite(_sample("mlregistry_prediction_confidence_sum", model="iris", version="1"))


def _cache_keys() -> list[str]:
    try:
        return [k.decode() if isinstance(k, bytes) else k for k in cache.keys("*")]
    except AttributeError:  # the local-memory cache lists no keys
        return [k.split(":", 2)[-1] for k in cache._cache]


def test_a_batch_with_non_finite_rows_fails_whole_naming_them(client_api, iris_production):
    rows = [IRIS_ROW, HUGE, IRIS_ROW, HUGE]
    response = _predict(client_api, {"instances": rows})
    assert response.status_code == 422
    error = response.json()["error"]
    assert set(error["fields"]) == {"instances[1]", "instances[3]"}
    assert "1, 3" in error["message"]
    _assert_nothing_served(0)


def test_a_regressor_answering_infinity_or_nan_is_422(client_api):
    from sklearn.datasets import load_diabetes

    model = factories.registered_model_create("diabetes", task="regression")
    version = services.model_version_create(
        model=model, artifact=io.BytesIO(factories.diabetes_regressor_bytes()), actor="tests"
    )
    promote(version)
    names = list(load_diabetes(as_frame=True).data.columns)
    huge = dict.fromkeys(names, 1e308)
    single = _predict(client_api, {"features": huge}, name="diabetes")
    assert single.status_code == 422, single.json()
    assert single.json()["error"]["type"] == "model_output_invalid"
    plain = dict.fromkeys(names, 0.01)
    batch = _predict(client_api, {"instances": [plain, huge]}, name="diabetes")
    assert batch.status_code == 422 and set(batch.json()["error"]["fields"]) == {"instances[1]"}
    assert _predict(client_api, {"features": plain}, name="diabetes").status_code == 200
    _assert_nothing_served(1)


def test_the_general_path_refuses_what_the_fast_path_refuses(client_api, iris_production):
    """scikit-learn's own predict/predict_proba (the fast path turned off for this model)."""
    assert _predict(client_api, {"features": IRIS_ROW}).status_code == 200
    key = (iris_production.pk, iris_production.artifact_sha256)
    loaded = model_cache._items[key]
    assert loaded.fast_predict is not None
    model_cache._items[key] = replace(loaded, fast_predict=None)
    response = _predict(client_api, {"instances": [HUGE, IRIS_ROW]})
    assert response.status_code == 422
    assert set(response.json()["error"]["fields"]) == {"instances[0]"}


def test_non_finite_rows_are_found_in_every_output_shape():
    find = non_finite_rows
    assert find(np.array([1.0, np.nan, np.inf, 2.0]), None) == [1, 2]
    assert find(np.array([[1.0, 2.0], [np.nan, 1.0]]), None) == [1]  # several outputs
    assert find(np.array(["a", "b"]), np.array([[0.5, 0.5], [np.nan, np.nan]])) == [1]
    assert find(np.array([1, "x", float("-inf")], dtype=object), None) == [2]
    assert find(np.array([0, 1]), np.array([[0.2, 0.8], [1.0, 0.0]])) == []
    # Finite values whose sum overflows are still finite.
    assert find(np.array([1e308, 1e308]), None) == []


def test_a_missing_optional_value_the_model_cannot_take_is_422_not_500(client_api, iris_model):
    schema = [{"name": n, "type": "float"} for n in factories.IRIS_FEATURES]
    schema[-1]["required"] = False
    version = services.model_version_create(
        model=iris_model,
        artifact=io.BytesIO(factories.iris_classifier_bytes()),
        actor="tests",
        input_schema=schema,
    )
    promote(version)
    without = {k: v for k, v in IRIS_ROW.items() if k != "petal_width"}
    response = _predict(client_api, {"instances": [IRIS_ROW, without]})
    assert response.status_code == 422, response.json()
    assert set(response.json()["error"]["fields"]) == {"instances[1]"}
    # scikit-learn's own path refuses the NaN inside the pipeline (a ValueError, once a 500).
    key = (version.pk, version.artifact_sha256)
    model_cache._items[key] = replace(model_cache._items[key], fast_predict=None)
    response = _predict(client_api, {"instances": [IRIS_ROW, without, IRIS_ROW]})
    assert response.status_code == 422, response.json()
    error = response.json()["error"]
    assert set(error["fields"]) == {"instances[1]"}
    assert "could not compute" in error["fields"]["instances[1]"][0]
    _assert_nothing_served(0)
