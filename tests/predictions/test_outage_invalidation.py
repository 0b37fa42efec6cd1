"""Invalidations made while the shared cache is down: the change is committed and answered
(no 503), this process serves it at once, and the cache deletes that failed are sent again
once the cache answers, so an entry they missed does not come back with it. The outages are
faults injected on purpose (a Redis on a closed port, or one failing delete_many)."""

from __future__ import annotations

import pytest
from django.core.cache import caches
from django.test import Client
from redis.exceptions import ConnectionError as RedisConnectionError

from config import cache_outage
from mlregistry import access
from mlregistry.models import ApiClientPolicy
from predictions.serving.routing import routing_fallback_clear
from tests import factories
from tests.predictions.conftest import cache_goes_down, iris_version, promote

pytestmark = pytest.mark.django_db(transaction=True)

ROW = {"sepal_length": 6.1, "sepal_width": 2.8, "petal_length": 4.7, "petal_width": 1.2}


@pytest.fixture(autouse=True)
def _fresh_outage_state():
    cache_outage.cache_reset()
    routing_fallback_clear()
    yield
    cache_outage.cache_reset()
    routing_fallback_clear()


def test_an_access_policy_saved_while_the_cache_is_down_is_answered(settings):
    factories.registered_model_create("iris")
    app = factories.user_create("app")
    from django.contrib.auth.models import User

    browser = Client()
    browser.force_login(User.objects.create_superuser("root", "root@example.org", "pw"))
    cache_goes_down(settings)

    response = browser.post(
        "/admin/mlregistry/apiclientpolicy/add/",
        {"user": app.pk, "allowed_models": [], "note": "lock down"},
    )

    assert response.status_code == 302, response.content
    assert ApiClientPolicy.objects.filter(user=app).exists()


def _locked_down_while_deletes_fail(monkeypatch, user) -> None:
    """`user`'s access policy emptied while the cache's delete_many fails (the fault), then the
    cache's retry period ended: the delete is kept, not yet sent."""

    def fails(*args, **kwargs):
        raise RedisConnectionError("Error 111 connecting to redis")

    with monkeypatch.context() as patched:
        patched.setattr(caches["default"], "delete_many", fails)
        access.api_client_policy_save(user=user, allowed_models=[], actor="tests")
    cache_outage._state["skip_until"] = 0.0


def test_a_delete_that_failed_is_sent_again_once_the_cache_answers(monkeypatch):
    factories.registered_model_create("iris")
    app = factories.user_create("app")
    assert access.api_client_allowed_models(user=app) is None  # cached: every model
    _locked_down_while_deletes_fail(monkeypatch, app)
    # The cache answers again (its retry period over): the next read sends the delete first.

    assert access.api_client_allowed_models(user=app) == frozenset()


def test_an_alias_moved_while_the_cache_is_down_is_served_by_this_process_at_once(
    settings, staff_api, iris_model
):
    promote(iris_version(iris_model, c=1.0))
    iris_version(iris_model, c=0.5)
    assert (
        staff_api.post("/api/v1/models/iris/predict", {"features": ROW}, format="json").status_code
        == 200
    )
    cache_goes_down(settings)
    staff_api.post("/api/v1/models/iris/predict", {"features": ROW}, format="json")

    moved = staff_api.put("/api/v1/models/iris/aliases/champion", {"version": 2}, format="json")
    answer = staff_api.post(
        "/api/v1/models/iris/aliases/champion/predict", {"features": ROW}, format="json"
    )

    assert moved.status_code == 200, moved.content
    assert answer.status_code == 200, answer.content
    assert answer.json()["model_version"] == 2


def test_the_predict_path_sends_the_kept_deletes_before_it_reads(monkeypatch, iris_production):
    from rest_framework.test import APIClient

    app = factories.user_create("app")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.token_create(app)}")
    assert (
        api.post("/api/v1/models/iris/predict", {"features": ROW}, format="json").status_code == 200
    )
    _locked_down_while_deletes_fail(monkeypatch, app)

    refused = api.post("/api/v1/models/iris/predict", {"features": ROW}, format="json")

    assert refused.status_code == 404
    assert not cache_outage._pending
