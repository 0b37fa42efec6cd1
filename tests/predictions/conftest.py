import io
import socket

import pytest

from mlregistry import services
from mlregistry.artifacts import load_skops
from predictions.cache import cache_reset
from predictions.loader import model_cache
from predictions.logbuffer import prediction_log_buffer
from predictions.serving import routing_fallback_clear
from tests import factories

IRIS_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
OTHER_ROW = {"sepal_length": 6.3, "sepal_width": 2.5, "petal_length": 4.9, "petal_width": 1.5}


@pytest.fixture(autouse=True)
def _serving_state(settings):
    """Per-test serving state: no flusher thread (it would write outside the test's
    transaction), empty per-process caches, and a batch chunk's first claim stamps the
    heartbeats as a fresh worker process's does."""
    from predictions import batch

    settings.PREDICTION_LOG_FLUSH_SECONDS = 0
    settings.PREDICTION_LOG_FLUSH_ROWS = 100_000
    settings.PREDICTION_CACHE_WRITE_BEHIND = False  # cache hits asserted right after a miss
    model_cache.clear()
    prediction_log_buffer.clear()
    routing_fallback_clear()
    cache_reset()
    batch._heartbeats_stamped_at = None
    batch._chunk_job.cache_clear()
    yield
    prediction_log_buffer.clear()
    routing_fallback_clear()
    cache_reset()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens here once the socket is closed


def cache_goes_down(settings) -> None:
    """Fault injected on purpose: the cache points at a Redis on a port nobody listens on."""
    settings.CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{_closed_port()}/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.1, "SOCKET_TIMEOUT": 0.1},
        }
    }
    settings.PREDICTION_CACHE_RETRY_SECONDS = 30


@pytest.fixture
def redis_down(settings):
    cache_goes_down(settings)
    yield


def promote(version, stage="production"):
    """A stage change with its on-commit work (routing invalidation) run, as in production."""
    from django.test import TestCase

    with TestCase.captureOnCommitCallbacks(execute=True):
        return services.model_version_transition(version=version, stage=stage, actor="tests")


def iris_estimator(c: float = 1.0):
    return load_skops(factories.iris_classifier_bytes(c))


def iris_version(model, c: float = 1.0, **kwargs):
    return services.model_version_create(
        model=model,
        artifact=io.BytesIO(factories.iris_classifier_bytes(c)),
        actor="tests",
        **kwargs,
    )


@pytest.fixture
def iris_production(iris_model):
    """iris v1 (C=1.0) in production."""
    version = iris_version(iris_model, c=1.0)
    promote(version)
    return version
