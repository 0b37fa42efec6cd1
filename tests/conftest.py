import os
import time
import uuid

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from tests import factories, storage

POSTGRES = os.environ.get("DATABASE_URL", "").startswith(("postgres", "postgresql"))


def pytest_configure(config):
    storage.backend_check()


def pytest_collection_modifyitems(config, items):
    if POSTGRES:
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL: set DATABASE_URL=postgres://...")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_storage(request, settings, tmp_path):
    """Each test gets its own artifact store and backup store: folders under its tmp_path, or,
    for a test marked `storage` with TEST_STORAGE=s3, a prefix of its own on the S3 server
    (tests/storage.py)."""
    on_s3 = storage.ON_S3 and request.node.get_closest_marker("storage") is not None
    server = request.getfixturevalue("s3_server") if on_s3 else None
    storage.storages_isolate(settings, tmp_path, s3_server=server)
    yield


@pytest.fixture(scope="session")
def s3_server():
    """An S3-compatible server on loopback for the whole session: the one .ci/run started
    (TEST_S3_ENDPOINT_URL), else moto's server on a free port (tests/s3.py)."""
    from tests.s3 import S3Server, s3_server_start

    if os.environ.get("TEST_S3_ENDPOINT_URL"):
        # One started by .ci/run (python -m tests.s3): shared by the whole run.
        yield S3Server(endpoint=os.environ["TEST_S3_ENDPOINT_URL"])
        return
    if storage.ON_S3:
        # The run asked for S3: without moto it must fail, not skip every storage test.
        import moto  # noqa: F401
    else:
        pytest.importorskip("moto", reason="moto[server] (requirements-dev.txt) serves S3 in tests")
    server = s3_server_start()
    yield server
    server.stop()


@pytest.fixture
def s3_relay(s3_server):
    """A byte-counting relay in front of the session's S3 server (tests/s3.py CountingRelay)."""
    from tests.s3 import CountingRelay

    relay = CountingRelay(s3_server.endpoint)
    yield relay
    relay.stop()


@pytest.fixture
def s3_relayed(settings, s3_server, s3_relay):
    """The artifact storage on S3 (a fresh prefix), reached through `s3_relay`, which counts
    the bytes the server sends."""
    from mlregistry.storage import get_artifact_storage

    entry = s3_server.storage_entry("mlr-tests", f"{uuid.uuid4().hex[:12]}/artifacts")
    entry["OPTIONS"]["endpoint_url"] = s3_relay.endpoint
    settings.STORAGES = {**settings.STORAGES, "artifacts": entry}
    return get_artifact_storage()


@pytest.fixture(autouse=True)
def _prediction_log_stays_in_its_test(settings):
    """No background flusher unless a test asks for one: it writes on a connection of its own,
    outside the test's transaction, so rows served in one test would land in later ones (a
    dashboard then counted the fuzzer's predictions). Buffered rows never outlive their test."""
    from predictions.logbuffer import prediction_log_buffer

    settings.PREDICTION_LOG_FLUSH_SECONDS = 0
    prediction_log_buffer.clear()
    yield
    prediction_log_buffer.clear()


@pytest.fixture(autouse=True)
def _clear_cache(request):
    """A clean cache per test; and no cached value refused by the cache's restricted unpickler
    (config/cache_serializer.py) unless the test plants one (`cache_refusals_expected`): a
    refusal elsewhere means a cached type is missing from the allow-list, which in production
    would quietly turn every read of it into a miss."""
    from config import cache_serializer

    cache.clear()
    refused_before = cache_serializer.refusals
    yield
    cache.clear()
    if "cache_refusals_expected" not in request.fixturenames:
        assert cache_serializer.refusals == refused_before, "a cached value was refused"


@pytest.fixture
def cache_refusals_expected():
    """Marks a test that plants values the cache's unpickler must refuse."""


@pytest.fixture
def staff_user(db):
    return factories.staff_create()


@pytest.fixture
def client_user(db):
    return factories.user_create("client")


def _api_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.token_create(user)}")
    return client


@pytest.fixture
def staff_api(staff_user) -> APIClient:
    return _api_client(staff_user)


@pytest.fixture
def client_api(client_user) -> APIClient:
    return _api_client(client_user)


@pytest.fixture
def anon_api() -> APIClient:
    return APIClient()


@pytest.fixture
def iris_model(db):
    return factories.registered_model_create("iris")


@pytest.fixture
def throttle_window_room():
    """Waits, when needed, until the throttle's fixed window of `duration` seconds has at least
    `room` seconds left, so that the few requests a test counts all fall in one window: the
    counter starts afresh at each window boundary (config/throttling.py), and a request made
    across it would be counted in the next window."""

    def wait(duration: int = 60, room: float = 15.0) -> None:
        left = duration - time.time() % duration
        if left < room:
            time.sleep(left + 0.05)

    return wait
