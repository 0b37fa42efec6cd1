"""The Python client (client/) against a live server with real models: the README workflow,
every typed error, retries of 429/503 and checked artifact loads."""

from __future__ import annotations

import os

import numpy as np
import pytest
from django.conf import settings as django_settings
from mlregistry_client import (
    DEFAULT_TRUSTED_TYPES,
    AuthenticationError,
    BatchPrediction,
    ChecksumMismatch,
    Conflict,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    Prediction,
    RateLimited,
    Registry,
    Unavailable,
    ValidationError,
)

from config.errors import RETRY_AFTER_SECONDS
from mlregistry.models import ModelVersion as ModelVersionRow
from mlregistry.storage import get_artifact_storage
from predictions.loader import model_cache
from tests import factories
from tests.live import IRIS_ROW, iris_named_classifier

pytestmark = pytest.mark.django_db(transaction=True)


def _other_classifier():
    from sklearn.linear_model import LogisticRegression

    x, y = factories.iris_frame()
    return LogisticRegression(C=0.05, max_iter=500).fit(x, y.map(lambda i: f"class-{i}"))


def _corrupt(name: str, version: int) -> None:
    row = ModelVersionRow.objects.get(model__name=name, version=version)
    with open(get_artifact_storage().path(row.artifact.name), "wb") as file:
        file.write(b"not the registered bytes")
    model_cache.clear()


def test_readme_workflow_from_log_model_to_rollback(live_world):
    x, _ = factories.iris_frame()
    estimator = iris_named_classifier()
    with Registry(live_world.url, live_world.staff) as registry:
        mv = registry.log_model(
            estimator,
            "flowers",
            metrics={"accuracy": 0.97},
            input_example=x.head(),
            tags={"team": "ml"},
            description="iris species",
        )
        assert (mv.name, mv.version, mv.stage) == ("flowers", 1, "none")
        assert mv.feature_names == list(x.columns)
        assert mv.metrics == {"accuracy": 0.97}
        assert mv.tags == {"team": "ml"} and "tags" not in mv.metadata
        assert mv.params["max_iter"] == 500
        model = registry.get_model("flowers")
        assert (model.task, model.description, model.latest_version) == (
            "classification",
            "iris species",
            1,
        )

        assert registry.transition("flowers", 1, "production", comment="first").stage == (
            "production"
        )
        single = registry.predict("flowers", IRIS_ROW)
        assert isinstance(single, Prediction)
        assert single.prediction == "setosa"
        assert set(single.probabilities) == {"setosa", "versicolor", "virginica"}
        assert single.model_version == 1

        batch = registry.predict("flowers", [IRIS_ROW, {**IRIS_ROW, "petal_length": 5.0}])
        assert isinstance(batch, BatchPrediction) and len(batch) == 2

        frame = registry.predict("flowers", x)
        assert list(frame.index) == list(x.index)
        assert (frame["prediction"].to_numpy() == estimator.predict(x)).all()
        np.testing.assert_allclose(
            frame[["proba_setosa", "proba_versicolor", "proba_virginica"]].to_numpy(),
            estimator.predict_proba(x),
            rtol=1e-12,
        )
        assert frame.attrs["model_version"] == 1 and frame.attrs["request_id"]

        from_array = registry.predict("flowers", x.to_numpy(), version=1)
        assert [p.prediction for p in from_array.predictions] == list(estimator.predict(x))

        assert registry.feedback(single.request_id, "setosa") == 1
        assert registry.feedback(batch.request_id, "setosa", row_index=1) == 1

        v2 = registry.log_model(_other_classifier(), "flowers", input_example=x.head())
        registry.transition("flowers", v2.version, "staging")
        split = registry.set_traffic("flowers", {1: 90, 2: 10})
        assert split.weights == {1: 90, 2: 10}
        routed = {
            registry.predict("flowers", IRIS_ROW, client_id=f"c{i}").model_version
            for i in range(40)
        }
        assert routed == {1, 2}
        same = {
            registry.predict("flowers", IRIS_ROW, client_id="sticky").model_version
            for _ in range(5)
        }
        assert len(same) == 1
        registry.clear_traffic("flowers")
        assert registry.get_traffic("flowers").weights == {}

        registry.transition("flowers", 2, "production")
        assert registry.predict("flowers", IRIS_ROW).model_version == 2
        assert registry.rollback("flowers", comment="v2 is worse").version == 1
        assert registry.predict("flowers", IRIS_ROW).model_version == 1
        assert [v.version for v in registry.list_versions("flowers")] == [2, 1]

        loaded = registry.load_model("flowers")
        assert (loaded.predict(x) == estimator.predict(x)).all()
        assert (
            registry.load_model("flowers", 2).predict(x) == _other_classifier().predict(x)
        ).all()


def test_regressor_and_a_classifier_without_predict_proba(live_world):
    with Registry(live_world.url, live_world.client) as registry:
        from sklearn.datasets import load_diabetes

        frame = load_diabetes(as_frame=True).data.head(3)
        answer = registry.predict("diabetes", frame.iloc[0].to_dict())
        assert isinstance(answer.prediction, float) and answer.probabilities is None
        assert len(registry.predict("diabetes", frame)) == 3

        margin = registry.predict("iris-margin", IRIS_ROW)
        assert margin.prediction == "setosa"
        assert (margin.confidence, margin.probabilities) == (None, None)


def test_errors_carry_the_servers_type_message_fields_and_request_id(live_world):
    with Registry(live_world.url, live_world.client) as registry:
        with pytest.raises(NotFound) as missing:
            registry.get_model("nope")
        assert missing.value.type == "not_found" and missing.value.request_id

        with pytest.raises(ValidationError) as invalid:
            registry.predict("iris", {k: v for k, v in IRIS_ROW.items() if k != "petal_width"})
        assert invalid.value.status == 400
        assert invalid.value.fields == {"petal_width": ["required feature is missing"]}
        assert "petal_width" in str(invalid.value)

        with pytest.raises(PermissionDenied):
            registry.create_model("mine")
        with pytest.raises(PermissionDenied):
            registry.load_model("iris")

    with Registry(live_world.url, live_world.staff) as staff:
        staff.create_model("empty")
        with pytest.raises(Conflict) as conflict:
            staff.predict("empty", IRIS_ROW)
        assert conflict.value.type == "conflict"
        with pytest.raises(Conflict):
            staff.create_model("empty")

    with Registry(live_world.url, "not-a-token") as anonymous, pytest.raises(AuthenticationError):
        anonymous.get_model("iris")


def test_batches_past_the_servers_limit_are_refused(live_world, settings):
    settings.PREDICTION_MAX_BATCH_ROWS = 3
    x, _ = factories.iris_frame()
    with Registry(live_world.url, live_world.client) as registry, pytest.raises(PayloadTooLarge):
        registry.predict("iris", x.head(4))


def test_429_is_retried_honouring_retry_after_then_raised(
    live_world, settings, throttle_window_room
):
    settings.REST_FRAMEWORK = {
        **django_settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"predict": "1/min"},
    }
    throttle_window_room(60)
    sent: list[str] = []
    registry = Registry(live_world.url, live_world.client, max_retries=2, max_retry_wait=0.01)
    registry._http.event_hooks["request"].append(lambda request: sent.append(request.url.path))
    with registry:
        registry.predict("iris", IRIS_ROW)
        with pytest.raises(RateLimited) as limited:
            registry.predict("iris", IRIS_ROW)
    assert len(sent) == 4  # one served, then the first try and two retries of the second
    assert 0 < limited.value.retry_after <= 60


def test_503_is_retried_then_raised_and_a_corrupt_artifact_is_never_loaded(live_world):
    _corrupt("iris-margin", 1)
    sent: list[str] = []
    registry = Registry(live_world.url, live_world.staff, max_retries=1, max_retry_wait=0.01)
    registry._http.event_hooks["request"].append(lambda request: sent.append(request.url.path))
    with registry:
        with pytest.raises(Unavailable) as unavailable:
            registry.predict("iris-margin", IRIS_ROW)
        assert len(sent) == 2 and unavailable.value.retry_after == RETRY_AFTER_SECONDS
        with pytest.raises(ChecksumMismatch):
            registry.load_model("iris-margin")


def test_registry_reads_its_url_and_token_from_the_environment(live_world, monkeypatch):
    monkeypatch.setenv("MLREGISTRY_URL", live_world.url)
    monkeypatch.setenv("MLREGISTRY_TOKEN", live_world.client)
    with Registry() as registry:
        assert registry.get_model("iris").production_version == 1
    monkeypatch.delenv("MLREGISTRY_URL")
    with pytest.raises(ValueError, match="MLREGISTRY_URL"):
        Registry()


def test_client_trusts_exactly_the_servers_default_types():
    if "SKOPS_TRUSTED_TYPES" in os.environ:
        pytest.skip("the server's list is set by the environment here, not the default")
    assert list(DEFAULT_TRUSTED_TYPES) == list(django_settings.SKOPS_TRUSTED_TYPES)
