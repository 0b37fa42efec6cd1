import pytest

from mlregistry import services
from predictions.cache import cache_reset
from predictions.loader import model_cache
from predictions.logbuffer import prediction_log_buffer
from predictions.selectors import routing_fallback_clear
from tests import factories


@pytest.fixture(autouse=True)
def _serving_state(settings):
    """Per-test serving state: no flusher thread (it would write outside the test's
    transaction), empty per-process caches."""
    settings.PREDICTION_LOG_FLUSH_SECONDS = 0
    settings.PREDICTION_LOG_FLUSH_ROWS = 100_000
    model_cache.clear()
    prediction_log_buffer.clear()
    routing_fallback_clear()
    cache_reset()
    yield
    prediction_log_buffer.clear()
    cache_reset()


@pytest.fixture
def iris_production(iris_model, django_capture_on_commit_callbacks):
    """iris v1 in production."""
    version = factories.version_create(iris_model, c=1.0)
    with django_capture_on_commit_callbacks(execute=True):
        services.model_version_transition(version=version, stage="production", actor="tests")
    return version


IRIS_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
