"""Deletes: numbers never reused, the next request after a delete is a 404, and a request
that loses the race to a delete is a 404 too, never a 500."""

import io

import pytest
from django.apps import apps
from django.test import TestCase

from config.errors import ConflictError, NotFoundError
from mlregistry import services
from mlregistry.models import ModelVersion, RegisteredModel, StageTransition
from predictions import services as prediction_services
from predictions.logbuffer import prediction_log_buffer
from predictions.models import PredictionLog, TrafficSplit
from tests import factories
from tests.predictions.conftest import IRIS_ROW, iris_version, promote

pytestmark = pytest.mark.django_db


def _predict(api, path="/api/v1/models/iris/predict"):
    return api.post(path, {"features": IRIS_ROW}, format="json")


def _committed(call, **kwargs):
    """A service call with its on-commit work (cache invalidation) run, as in production."""
    with TestCase.captureOnCommitCallbacks(execute=True):
        return call(**kwargs)


def test_version_numbers_are_never_reused_after_the_newest_is_deleted(staff_api, iris_model):
    for c in (1.0, 2.0, 3.0):
        iris_version(iris_model, c=c)
    assert staff_api.delete("/api/v1/models/iris/versions/3/").status_code == 200
    created = iris_version(iris_model, c=4.0)
    assert created.version == 4
    assert staff_api.get("/api/v1/models/iris/versions/3/").status_code == 404
    iris_model.refresh_from_db()
    assert iris_model.last_version_number == 4


def test_every_version_of_a_model_deleted_still_leaves_the_counter(iris_model):
    version = iris_version(iris_model)
    services.model_version_delete(version=version, actor="tests")
    assert iris_version(iris_model, c=2.0).version == 2


def test_migration_starts_each_counter_at_the_highest_existing_number(iris_model):
    from importlib import import_module

    for c in (1.0, 2.0):
        iris_version(iris_model, c=c)
    other = factories.registered_model_create("empty")
    RegisteredModel.objects.update(last_version_number=0)  # as before the migration
    migration = import_module("mlregistry.migrations.0004_version_counter_numeric_names")
    migration.start_counters(apps, None)
    assert RegisteredModel.objects.get(pk=iris_model.pk).last_version_number == 2
    assert RegisteredModel.objects.get(pk=other.pk).last_version_number == 0
    assert iris_version(iris_model, c=3.0).version == 3


def test_a_deleted_pinned_version_is_404_on_the_next_request(client_api, iris_production):
    staged = iris_version(iris_production.model, c=2.0)
    pinned = f"/api/v1/models/iris/versions/{staged.version}/predict"
    assert _predict(client_api, pinned).status_code == 200  # routing entry now cached
    _committed(services.model_version_delete, version=staged, actor="tests")
    response = _predict(client_api, pinned)
    assert response.status_code == 404, response.json()
    prediction_services.prediction_log_flush()
    assert not PredictionLog.objects.filter(version_id=staged.pk).exists()


def test_api_delete_of_a_version_invalidates_routing_on_commit(
    client_api, staff_api, iris_production, django_capture_on_commit_callbacks
):
    staged = iris_version(iris_production.model, c=2.0)
    pinned = f"/api/v1/models/iris/versions/{staged.version}/predict"
    assert _predict(client_api, pinned).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_api.delete(f"/api/v1/models/iris/versions/{staged.version}/")
    assert response.status_code == 200 and response.json()["aliases_removed"] == []
    assert _predict(client_api, pinned).status_code == 404


def test_deleting_the_production_version_is_refused(staff_api, iris_production):
    response = staff_api.delete("/api/v1/models/iris/versions/1/")
    assert response.status_code == 409
    assert "production" in response.json()["error"]["message"]
    assert ModelVersion.objects.filter(pk=iris_production.pk).exists()


def test_a_deleted_model_is_404_at_once_on_every_predict_route(client_api, iris_production):
    model = iris_production.model
    model_id = model.pk
    promote(iris_version(model, c=2.0))  # v1 archived, v2 production
    assert _predict(client_api).status_code == 200
    assert _predict(client_api, f"/api/v1/predict/{model_id}").status_code == 200
    archived = ModelVersion.objects.get(model=model, version=1)
    promote(archived, stage="staging")
    _committed(services.model_version_transition, version=archived, stage="archived", actor="t")
    production = ModelVersion.objects.get(model=model, version=2)
    _committed(services.model_version_transition, version=production, stage="archived", actor="t")
    assert StageTransition.objects.filter(version__model=model).exists()
    _committed(services.registered_model_delete, model=model, actor="tests")
    assert _predict(client_api).status_code == 404
    assert _predict(client_api, f"/api/v1/predict/{model_id}").status_code == 404
    assert _predict(client_api, "/api/v1/models/iris/versions/2/predict").status_code == 404


def test_deleting_a_split_member_ends_the_split(client_api, iris_production):
    model = iris_production.model
    staged = iris_version(model, c=2.0)
    _committed(
        prediction_services.traffic_split_set,
        model=model,
        splits=[{"version": 1, "weight": 50}, {"version": 2, "weight": 50}],
        actor="tests",
    )
    for _ in range(5):
        assert _predict(client_api).status_code == 200
    _committed(services.model_version_delete, version=staged, actor="tests")
    assert not TrafficSplit.objects.filter(model=model).exists()
    for _ in range(10):
        response = _predict(client_api)
        assert response.status_code == 200 and response.json()["model_version"] == 1


def test_log_rows_of_a_version_deleted_before_the_flush_are_not_written(
    client_api, iris_production
):
    staged = iris_version(iris_production.model, c=2.0)
    pinned = f"/api/v1/models/iris/versions/{staged.version}/predict"
    assert _predict(client_api, pinned).status_code == 200
    assert _predict(client_api).status_code == 200
    assert len(prediction_log_buffer) == 2
    services.model_version_delete(version=staged, actor="tests")
    assert prediction_services.prediction_log_flush() == 1
    assert list(PredictionLog.objects.values_list("version_id", flat=True)) == [iris_production.pk]


# --- A request that looked an object up, then lost the race to its delete ---------------


def _stale_version(model, c=2.0):
    """A version object as a request holds it after its lookup, deleted before the service
    locks it."""
    version = iris_version(model, c=c)
    stale = ModelVersion.objects.select_related("model").get(pk=version.pk)
    ModelVersion.objects.filter(pk=version.pk).delete()
    return stale


def test_transition_of_a_version_deleted_after_its_lookup_is_404(iris_model):
    stale = _stale_version(iris_model)
    with pytest.raises(NotFoundError):
        services.model_version_transition(version=stale, stage="staging", actor="tests")


def test_delete_of_a_version_deleted_after_its_lookup_is_404(iris_model):
    stale = _stale_version(iris_model)
    with pytest.raises(NotFoundError):
        services.model_version_delete(version=stale, actor="tests")


def test_services_on_a_model_deleted_after_its_lookup_are_404(iris_model):
    stale = RegisteredModel.objects.get(pk=iris_model.pk)
    RegisteredModel.objects.filter(pk=iris_model.pk).delete()
    calls = [
        lambda: services.registered_model_delete(model=stale, actor="tests"),
        lambda: services.registered_model_update(model=stale, actor="tests", description="x"),
        lambda: services.model_version_create(
            model=stale, artifact=io.BytesIO(factories.iris_classifier_bytes()), actor="tests"
        ),
        lambda: prediction_services.traffic_split_set(
            model=stale, splits=[{"version": 1, "weight": 100}], actor="tests"
        ),
        lambda: prediction_services.traffic_split_clear(model=stale, actor="tests"),
        lambda: services.model_version_rollback(model=stale, actor="tests"),
    ]
    for call in calls:
        with pytest.raises((NotFoundError, ConflictError)):
            call()


def test_registered_model_delete_refuses_a_model_with_production(iris_production):
    with pytest.raises(ConflictError, match="production version"):
        services.registered_model_delete(model=iris_production.model, actor="tests")
