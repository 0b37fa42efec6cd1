"""Predicting through an alias: the native and MLflow routes, `latest`, and that a committed
move is followed by every request that starts after it (the routing entry is dropped on
commit, as for a promotion)."""

import threading
import time

import pytest
from django.test import TestCase

from mlregistry import services
from mlregistry.models import Stage
from mlregistry.selectors import routing_cache_key
from predictions.cache import cache_get
from tests import factories
from tests.predictions.conftest import IRIS_ROW, iris_version


def _alias_set(model, alias, version, actor="tests"):
    with TestCase.captureOnCommitCallbacks(execute=True):
        return services.model_alias_set(model=model, alias=alias, version=version, actor=actor)


def _predict(api, url, body=None):
    return api.post(url, body or {"features": IRIS_ROW}, format="json")


@pytest.fixture
def iris_two(iris_model):
    return [iris_version(iris_model, c=1.0), iris_version(iris_model, c=0.01)]


@pytest.mark.django_db
def test_predict_through_an_alias_answers_with_its_version_and_names_it(
    client_api, iris_model, iris_two
):
    _alias_set(iris_model, "champion", 2)
    response = _predict(client_api, "/api/v1/models/iris/aliases/champion/predict")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["model_version"], body["alias"], body["stage"]) == (2, "champion", "none")
    batch = _predict(
        client_api,
        "/api/v1/models/iris/aliases/champion/predict",
        {"instances": [IRIS_ROW, IRIS_ROW]},
    ).json()
    assert batch["alias"] == "champion" and len(batch["predictions"]) == 2
    # The production route is not affected: there is no production version.
    assert _predict(client_api, "/api/v1/models/iris/predict").status_code == 409


@pytest.mark.django_db
def test_latest_resolves_to_the_highest_version_not_archived(client_api, iris_model, iris_two):
    url = "/api/v1/models/iris/aliases/latest/predict"
    assert _predict(client_api, url).json()["model_version"] == 2
    with TestCase.captureOnCommitCallbacks(execute=True):
        services.model_version_transition(version=iris_two[1], stage=Stage.ARCHIVED, actor="t")
    assert _predict(client_api, url).json()["model_version"] == 1


@pytest.mark.django_db
def test_unknown_alias_or_model_is_404(client_api, iris_model, iris_two):
    for url in (
        "/api/v1/models/iris/aliases/nobody/predict",
        "/api/v1/models/iris/aliases/Bad%20Name/predict",
        "/api/v1/models/nope/aliases/champion/predict",
    ):
        response = _predict(client_api, url)
        assert response.status_code == 404, url


@pytest.mark.django_db
def test_alias_predict_needs_authentication_and_validates_rows(anon_api, client_api, iris_two):
    _alias_set(iris_two[0].model, "champion", 1)
    url = "/api/v1/models/iris/aliases/champion/predict"
    assert _predict(anon_api, url).status_code == 401
    bad = _predict(client_api, url, {"features": {"sepal_length": "x"}})
    assert bad.status_code == 400 and bad.json()["error"]["fields"]


@pytest.mark.django_db
def test_mlflow_invocations_through_an_alias(client_api, iris_model, iris_two):
    _alias_set(iris_model, "challenger", 1)
    response = client_api.post(
        "/api/v1/models/iris/aliases/challenger/invocations",
        {"dataframe_records": [IRIS_ROW, IRIS_ROW]},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert len(response.json()["predictions"]) == 2
    missing = client_api.post(
        "/api/v1/models/iris/aliases/nobody/invocations",
        {"dataframe_records": [IRIS_ROW]},
        format="json",
    )
    assert missing.status_code == 404 and missing.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"


@pytest.mark.django_db
def test_a_committed_move_drops_the_routing_entry_and_the_next_request_follows(
    client_api, iris_model, iris_two
):
    url = "/api/v1/models/iris/aliases/champion/predict"
    _alias_set(iris_model, "champion", 1)
    assert _predict(client_api, url).json()["model_version"] == 1
    assert cache_get(routing_cache_key("iris")).aliases == {"champion": iris_two[0].pk}
    _alias_set(iris_model, "champion", 2)
    assert cache_get(routing_cache_key("iris")) is None
    assert _predict(client_api, url).json()["model_version"] == 2
    with TestCase.captureOnCommitCallbacks(execute=True):
        services.model_alias_delete(model=iris_model, alias="champion", actor="t")
    assert _predict(client_api, url).status_code == 404


@pytest.mark.django_db
def test_archiving_the_aliased_version_stops_serving_it_through_the_alias(
    client_api, iris_model, iris_two
):
    url = "/api/v1/models/iris/aliases/champion/predict"
    _alias_set(iris_model, "champion", 2)
    assert _predict(client_api, url).status_code == 200
    with TestCase.captureOnCommitCallbacks(execute=True):
        services.model_version_transition(version=iris_two[1], stage=Stage.ARCHIVED, actor="t")
    assert _predict(client_api, url).status_code == 404


# --- Moves under load: real threads, the real cache -----------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_no_request_starting_after_a_committed_move_is_served_by_the_old_version():
    """Three clients predict through `champion` without pause (each on a thread of its own,
    through the whole request stack and the configured cache: Redis when REDIS_URL is set)
    while it is moved back and forth through the API; every request that started after a
    move's answer arrived is served by the version the move chose (until the next move)."""
    from django.db import connections
    from rest_framework.test import APIClient

    staff = factories.staff_create()
    model = factories.registered_model_create("iris")
    iris_version(model, c=1.0)
    iris_version(model, c=0.01)
    services.model_alias_set(model=model, alias="champion", version=1, actor="tests")
    staff_token = factories.token_create(staff)
    client_token = factories.token_create(factories.user_create("client"))
    url = "/api/v1/models/iris/aliases/champion"
    served: list[tuple[float, int]] = []
    stop = threading.Event()
    errors: list = []

    def api(token):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        return client

    def hammer():
        client = api(client_token)
        try:
            while not stop.is_set():
                started = time.monotonic()
                response = client.post(f"{url}/predict", {"features": IRIS_ROW}, format="json")
                if response.status_code != 200:
                    errors.append((response.status_code, response.content))
                    continue
                served.append((started, response.json()["model_version"]))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    moves: list[tuple[float, float, int]] = []  # (sent, answered, version)
    staff_api = api(staff_token)
    try:
        for i in range(12):
            target = 2 if i % 2 == 0 else 1
            time.sleep(0.05)
            sent = time.monotonic()
            response = staff_api.put(url, {"version": target}, format="json")
            assert response.status_code == 200, response.content
            moves.append((sent, time.monotonic(), target))
        time.sleep(0.1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not errors, errors[:3]
    checked = 0
    for index, (_, answered, target) in enumerate(moves):
        next_sent = moves[index + 1][0] if index + 1 < len(moves) else float("inf")
        for started, version in served:
            if answered < started < next_sent:
                assert version == target, (index, started, version, target)
                checked += 1
    assert checked > 0
    from mlregistry.models import AuditEvent

    assert AuditEvent.objects.filter(verb="alias_set").count() == 1 + 12  # the first set, the moves
