"""One Redis round trip per predict request (config/readahead.py, predictions.serving):
the token, routing entry, access policy, result and throttle counter travel in one pipeline, with
the result-cache writes of earlier requests, and every decision is still made by its owner."""

import os
import threading
import time

import pytest
from django.core.cache import cache
from knox.crypto import hash_token
from knox.models import AuthToken
from redis.connection import AbstractConnection
from rest_framework.test import APIClient

from mlregistry.access import api_tokens_revoke
from mlregistry.models import ApiClientPolicy
from predictions.auth import auth_cache_key, token_user_pk
from predictions.cache import cache_reset
from predictions.serving import (
    SharedDecodes,
    WriteBehind,
    cache_writes_flush,
    pinned_connection,
    write_behind_use,
)
from tests import factories
from tests.predictions.conftest import IRIS_ROW, OTHER_ROW, cache_goes_down

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs Redis (REDIS_URL)"),
]

URL = "/api/v1/models/iris/predict"


def _predict(api, row=IRIS_ROW):
    return api.post(URL, {"features": row}, format="json")


@pytest.fixture
def round_trips(monkeypatch):
    """A spy, not a mock: it wraps (and calls through) the method that sends every Redis command
    and pipeline, and records what this thread sent (the writer thread has its own trips)."""
    real = AbstractConnection.send_packed_command
    me = threading.get_ident()
    sent: list[bytes] = []

    def spy(self, command, check_health=True):
        if threading.get_ident() == me:
            sent.append(command if isinstance(command, bytes) else b"".join(command))
        return real(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", spy)
    return sent


@pytest.fixture
def writer_without_thread(monkeypatch, settings):
    """Write-behind on, with a real WriteBehind whose background thread is never started, so a
    pending write reaches Redis only by the next request's pipeline or cache_writes_flush: the
    thread's timing is taken out of the test, nothing else is replaced."""
    settings.PREDICTION_CACHE_WRITE_BEHIND = True
    writer = WriteBehind(start_thread=False)
    previous = write_behind_use(writer)
    yield writer
    write_behind_use(previous)


def _rates(settings, **rates):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}


def _result_keys() -> list[str]:
    return cache.keys("pred:v1:*")


def test_a_steady_state_request_makes_one_round_trip(client_api, iris_production, round_trips):
    assert _predict(client_api).status_code == 200  # warm-up: this process learns the token
    round_trips.clear()
    response = _predict(client_api)
    assert response.status_code == 200 and response.json()["cached"] is True
    assert len(round_trips) == 1
    (pipeline,) = round_trips
    for part in (b"MGET", b"auth:v1:", b"routing:v2:iris", b"access:models:", b"pred:v1:"):
        assert part in pipeline, part
    assert b"INCR" in pipeline and b"throttle:predict:user:" in pipeline


def test_a_miss_with_write_behind_is_one_round_trip_too(
    client_api, iris_production, writer_without_thread, round_trips
):
    assert _predict(client_api).status_code == 200
    round_trips.clear()
    response = _predict(client_api, OTHER_ROW)
    assert response.status_code == 200 and response.json()["cached"] is False
    assert len(round_trips) == 1


def test_the_throttle_refuses_over_the_limit_counting_from_the_pipeline(
    client_api, iris_production, settings, round_trips, throttle_window_room
):
    _rates(settings, predict="3/hour")
    throttle_window_room(3600)
    # The first request is counted by the throttle itself (the token's user is not known yet),
    # the next ones by the pipeline: each is counted exactly once.
    for _ in range(3):
        assert _predict(client_api).status_code == 200
    round_trips.clear()
    refused = _predict(client_api)
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "throttled"
    assert 1 <= int(refused["Retry-After"]) <= 3600
    assert len(round_trips) == 1  # the count came with the read-ahead, not a round trip of its own


def test_a_warm_restricted_client_gets_404_and_sees_the_next_policy_change(
    client_api, client_user, iris_production, iris_model, django_capture_on_commit_callbacks
):
    assert _predict(client_api).status_code == 200
    assert _predict(client_api).json()["cached"] is True  # token, policy and result all warm
    wine = factories.registered_model_create("wine")
    with django_capture_on_commit_callbacks(execute=True):
        policy = ApiClientPolicy.objects.create(user=client_user)
        policy.allowed_models.set([wine])
    refused = _predict(client_api)
    assert refused.status_code == 404
    assert refused.json()["error"]["message"] == "No registered model named 'iris'."
    with django_capture_on_commit_callbacks(execute=True):
        policy.allowed_models.add(iris_model)
    assert _predict(client_api).status_code == 200


def test_a_revoked_token_is_refused_though_its_user_is_remembered(client_user, iris_production):
    token = factories.token_create(client_user)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert _predict(api).status_code == 200
    assert _predict(api).status_code == 200
    assert token_user_pk(auth_cache_key(hash_token(token))) == client_user.pk
    api_tokens_revoke(tokens=AuthToken.objects.filter(user=client_user), actor="tests")
    refused = _predict(api)
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "authentication_failed"


def test_refused_requests_with_a_revoked_token_do_not_use_up_its_users_budget(
    client_user, iris_production, settings, throttle_window_room
):
    _rates(settings, predict="3/hour")
    throttle_window_room(3600)
    revoked_token, revoked_secret = AuthToken.objects.create(user=client_user)
    revoked, kept = APIClient(), APIClient()
    revoked.credentials(HTTP_AUTHORIZATION=f"Bearer {revoked_secret}")
    kept.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.token_create(client_user)}")
    assert _predict(revoked).status_code == 200
    assert _predict(revoked).status_code == 200  # 2 of 3, and this process knows its user
    revoked_token.delete()
    for _ in range(5):
        assert _predict(revoked).status_code == 401
    # Nor does this process read ahead for that token any more.
    assert token_user_pk(auth_cache_key(revoked_token.digest)) is None
    assert _predict(kept).status_code == 200  # 3 of 3
    assert _predict(kept).status_code == 429


def test_a_pending_result_write_rides_in_the_next_requests_pipeline(
    client_api, iris_production, writer_without_thread, round_trips
):
    first = _predict(client_api, OTHER_ROW)
    assert first.json()["cached"] is False
    assert writer_without_thread.pending == 1 and _result_keys() == []
    round_trips.clear()
    assert _predict(client_api, IRIS_ROW).json()["cached"] is False
    assert len(round_trips) == 1  # the write travelled in this request's pipeline
    assert len(_result_keys()) == 1  # OTHER_ROW's; IRIS_ROW's waits for the next request
    again = _predict(client_api, OTHER_ROW).json()
    assert again["cached"] is True
    assert again["prediction"] == first.json()["prediction"]
    assert again["probabilities"] == first.json()["probabilities"]


def test_flushing_sends_the_pending_writes(client_api, iris_production, writer_without_thread):
    assert _predict(client_api, OTHER_ROW).json()["cached"] is False
    assert _result_keys() == []
    cache_writes_flush()
    assert writer_without_thread.pending == 0 and len(_result_keys()) == 1
    assert _predict(client_api, OTHER_ROW).json()["cached"] is True


def test_the_background_writer_sends_leftovers_without_another_request(
    client_api, iris_production, settings
):
    settings.PREDICTION_CACHE_WRITE_BEHIND = True
    settings.PREDICTION_CACHE_WRITE_DELAY = 0.05
    assert _predict(client_api, OTHER_ROW).json()["cached"] is False
    deadline = time.monotonic() + 5
    while not _result_keys():
        if time.monotonic() > deadline:
            pytest.fail("the background writer never sent the pending write")
        time.sleep(0.02)


def test_predictions_still_answer_when_the_cache_fails(client_api, iris_production, settings):
    settings.PREDICTION_CACHE_WRITE_BEHIND = True
    assert _predict(client_api).status_code == 200  # the token's user is now known
    assert _predict(client_api, OTHER_ROW).status_code == 200  # a write is pending
    cache_goes_down(settings)
    for row in (IRIS_ROW, OTHER_ROW, IRIS_ROW):
        response = _predict(client_api, row)
        assert response.status_code == 200, response.json()
        assert response.json()["cached"] is False
    batch = client_api.post(URL, {"instances": [IRIS_ROW, OTHER_ROW]}, format="json")
    assert batch.status_code == 200 and len(batch.json()["predictions"]) == 2
    cache_writes_flush()  # with nothing reachable: no exception


def test_an_error_reply_closes_the_connection_and_predictions_still_answer(
    client_api, iris_production, writer_without_thread, round_trips
):
    """A real Redis error, not a mock: the throttle counter is made a non-integer, so the
    pipeline's INCR fails. The reply of the pending write behind it is never read, so the
    connection must not be used again; the request is answered uncached."""
    assert _predict(client_api).status_code == 200  # the token's user is now known
    assert _predict(client_api, OTHER_ROW).status_code == 200  # a write waits for the next trip
    (counter,) = cache.keys("throttle:predict:*")
    cache.set(counter, "not a number", 60)
    assert pinned_connection() is not None
    response = _predict(client_api)
    assert response.status_code == 200 and response.json()["cached"] is False
    assert pinned_connection() is None  # closed and given back, not kept
    cache.delete(counter)
    cache_reset()
    round_trips.clear()
    again = _predict(client_api)
    assert again.status_code == 200 and again.json()["cached"] is True
    assert len(round_trips) == 1  # on a new connection of the pool, one trip as before


def test_shared_decodes_reuse_an_object_only_for_the_same_bytes():
    decodes = SharedDecodes()
    client = cache.client
    first = client.encode({"versions": [1, 2]})
    a = decodes.decode(client, "k", first)
    assert decodes.decode(client, "k", bytes(first)) is a  # equal bytes: decoded once
    changed = decodes.decode(client, "k", client.encode({"versions": [1, 2, 3]}))
    assert changed == {"versions": [1, 2, 3]} and changed is not a
    assert decodes.decode(client, "other", first) is not a  # per key


def test_each_request_gets_its_own_user_though_the_token_entry_is_decoded_once(
    client_user, iris_production, monkeypatch
):
    """The read-ahead hands one decoded (user, token) to every request with that token; what a
    request changes on its user (Django caches permissions there) must not reach the next."""
    from rest_framework.request import Request

    seen = []
    real = Request.user.fset

    def record(self, value):
        seen.append(value)
        real(self, value)

    monkeypatch.setattr(Request, "user", Request.user.setter(record))
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.token_create(client_user)}")
    for _ in range(3):
        assert _predict(api).status_code == 200
    users = [u for u in seen if getattr(u, "pk", None) == client_user.pk]
    assert len(users) == 3 and len({id(u) for u in users}) == 3
    users[1].marker = "changed by request 2"
    users[1]._state.fields_cache["x"] = 1
    assert not hasattr(users[2], "marker") and "x" not in users[2]._state.fields_cache
