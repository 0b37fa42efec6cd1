import os
import time

import pytest

from mlregistry.models import ModelVersion
from mlregistry.storage import get_artifact_storage
from predictions.cache import cache_available, cache_get
from predictions.loader import model_cache
from predictions.metrics import CACHE_REQUESTS
from predictions.serving import routing_entry_get
from tests.predictions.conftest import IRIS_ROW, OTHER_ROW, iris_version, promote
from tests.storage import store_read, store_write

pytestmark = [pytest.mark.django_db, pytest.mark.storage]


def _predict(api, row=IRIS_ROW):
    return api.post("/api/v1/models/iris/predict", {"features": row}, format="json")


def test_predictions_answer_uncached_while_redis_is_down(client_api, iris_production, redis_down):
    errors_before = CACHE_REQUESTS.labels(result="error")._value.get()
    first = _predict(client_api)
    assert first.status_code == 200, first.json()
    assert first.json()["cached"] is False
    started = time.perf_counter()
    for _ in range(5):
        again = _predict(client_api)
        assert again.status_code == 200 and again.json()["cached"] is False
    # After the first failure the cache is skipped, not retried with a timeout per request.
    assert time.perf_counter() - started < 2
    assert CACHE_REQUESTS.labels(result="error")._value.get() > errors_before
    assert not cache_available()
    ready = client_api.get("/health/ready").json()
    assert ready["status"] == "degraded"
    assert ready["checks"]["prediction_cache"]["status"] == "degraded"
    assert ready["checks"]["cache"]["status"] == "degraded"


def test_promotion_during_a_redis_outage_is_seen_within_the_local_ttl(
    client_api, iris_production, iris_model, redis_down, settings
):
    settings.PREDICTION_ROUTING_LOCAL_TTL = 0.2
    assert _predict(client_api).json()["model_version"] == 1
    promote(iris_version(iris_model, c=0.01))  # its invalidation cannot reach Redis
    time.sleep(0.3)
    assert _predict(client_api).json()["model_version"] == 2


def test_routing_entry_is_cached_until_a_stage_change(iris_production, iris_model):
    entry = routing_entry_get(name="iris")
    assert entry.production == iris_production.pk and entry.split == ()
    assert cache_get("routing:v2:iris") == entry
    promote(iris_version(iris_model, c=0.01))
    assert cache_get("routing:v2:iris") is None
    fresh = routing_entry_get(name="iris")
    assert fresh.versions[fresh.production].version == 2


def test_a_stale_write_racing_a_promotion_is_corrected(iris_production, iris_model, monkeypatch):
    # Simulates the race on purpose: the promotion commits (and invalidates) between this
    # process's database read and its cache write.
    from predictions.serving import routing as routing_module

    newer = iris_version(iris_model, c=0.01)
    real = routing_module.routing_entry_from_db
    calls = []

    def racing(*, name):
        entry = real(name=name)
        if not calls:
            promote(newer)
        calls.append(name)
        return entry

    monkeypatch.setattr(routing_module, "routing_entry_from_db", racing)
    # The request that read before the commit may answer with what it read; the entry it
    # wrote after the commit carries the retired generation, so no later request serves it.
    assert routing_entry_get(name="iris").production == iris_production.pk
    assert cache_get("routing:v2:iris").production == iris_production.pk
    assert routing_entry_get(name="iris").production == newer.pk
    assert cache_get("routing:v2:iris").production == newer.pk


def test_model_cache_is_an_lru_of_the_configured_size(
    client_api, iris_production, iris_model, settings
):
    settings.PREDICTION_MODEL_CACHE_SIZE = 1
    iris_version(iris_model, c=0.01)
    _predict(client_api)
    assert len(model_cache) == 1
    pinned = client_api.post(
        "/api/v1/models/iris/versions/2/predict", {"features": OTHER_ROW}, format="json"
    )
    assert pinned.status_code == 200 and len(model_cache) == 1
    assert _predict(client_api, OTHER_ROW).json()["model_version"] == 1


def test_model_cache_is_bounded_by_megabytes_too(client_api, iris_production, iris_model, settings):
    settings.PREDICTION_MODEL_CACHE_SIZE = 8
    settings.PREDICTION_MODEL_CACHE_MAX_MB = 1  # each iris artifact is a few KB: fake a big one
    _predict(client_api)
    (loaded,) = model_cache._items.values()
    loaded.size_bytes = 1024 * 1024
    iris_version(iris_model, c=0.01)
    pinned = client_api.post(
        "/api/v1/models/iris/versions/2/predict", {"features": OTHER_ROW}, format="json"
    )
    assert pinned.status_code == 200
    assert [key[0] for key in model_cache._items] == [
        pinned.json() and ModelVersion.objects.get(version=2).pk
    ]
    assert model_cache.peek(loaded.version_id, loaded.sha256) is None
    assert next(iter(model_cache._items.values())).size_bytes > 0


def test_a_touching_peek_counts_as_use_for_the_lru(
    client_api, iris_production, iris_model, settings
):
    """A batch worker finds its model with peek(touch=True) on every chunk: that model must
    not be the first one evicted. A plain peek (readiness) changes nothing."""
    from predictions.serving import version_info

    settings.PREDICTION_MODEL_CACHE_SIZE = 2
    v2, v3 = iris_version(iris_model, c=0.01), iris_version(iris_model, c=0.1)
    v1 = iris_production
    model_cache.get(version_info(v1), model_name="iris")
    model_cache.get(version_info(v2), model_name="iris")
    assert model_cache.peek(v1.pk, v1.artifact_sha256, touch=True) is not None  # v1 now newest
    assert model_cache.peek(v2.pk, v2.artifact_sha256) is not None  # v2 stays the oldest
    model_cache.get(version_info(v3), model_name="iris")
    assert model_cache.peek(v1.pk, v1.artifact_sha256) is not None
    assert model_cache.peek(v2.pk, v2.artifact_sha256) is None
    assert model_cache.peek(v1.pk, "0" * 64, touch=True) is None


def test_tampered_artifact_is_refused_with_503(client_api, iris_production):
    version = ModelVersion.objects.get(pk=iris_production.pk)
    data = bytearray(store_read(version.artifact.name))
    data[100:108] = b"tampered"
    store_write(version.artifact.name, bytes(data))
    response = _predict(client_api)
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "artifact_integrity_error"
    # One broken model does not take the process out of rotation: readiness reports it.
    ready = client_api.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "degraded"
    models = ready.json()["checks"]["models"]
    assert models["status"] == "degraded"
    assert models["detail"]["production"]["iris"]["state"] == "failed"
    # The operators' deep check loads it again, and fails.
    deep = client_api.get("/health/deep")
    assert deep.status_code == 503
    assert deep.json()["checks"]["models"]["detail"]["production"]["iris"]["state"] == "failed"


def test_missing_artifact_is_503_not_500(client_api, iris_production):
    version = ModelVersion.objects.get(pk=iris_production.pk)
    get_artifact_storage().delete(version.artifact.name)
    response = _predict(client_api)
    assert (
        response.status_code == 503 and "could not be loaded" in response.json()["error"]["message"]
    )


def test_readiness_never_loads_a_model_and_the_deep_check_does(client_api, iris_production):
    model_cache.clear()
    body = client_api.get("/health/ready").json()
    assert body["checks"]["models"]["status"] == "ok"
    assert body["checks"]["models"]["detail"]["production"]["iris"]["state"] == "not_loaded"
    assert body["checks"]["prediction_cache"]["status"] == "ok"
    assert len(model_cache) == 0
    assert client_api.get("/health/deep").json()["checks"]["models"]["status"] == "ok"
    assert len(model_cache) == 1
    body = client_api.get("/health/ready").json()
    assert body["checks"]["models"]["detail"]["production"]["iris"]["state"] == "loaded"


def test_the_deep_check_is_not_open_to_everyone(anon_api, iris_production, settings):
    settings.METRICS_ALLOWED_IPS = []
    assert anon_api.get("/health/deep").status_code == 403


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs Redis (REDIS_URL)")
def test_result_written_behind_reaches_redis(client_api, iris_production, settings):
    settings.PREDICTION_CACHE_WRITE_BEHIND = True
    assert _predict(client_api, OTHER_ROW).json()["cached"] is False
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if _predict(client_api, OTHER_ROW).json()["cached"]:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the result never reached the cache")


def test_local_memory_cache_is_written_at_once_even_with_write_behind(
    client_api, iris_production, settings
):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    settings.PREDICTION_CACHE_WRITE_BEHIND = True
    _predict(client_api, OTHER_ROW)
    assert _predict(client_api, OTHER_ROW).json()["cached"] is True
