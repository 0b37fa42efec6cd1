"""The shared cache's restricted unpickler (config/cache_serializer.py): what the product caches
comes back whole; a planted value that would import or call anything else reads as a miss and
runs nothing. The Redis tests plant raw bytes under the product's own keys with redis-py and
need REDIS_URL (set by .ci/run)."""

import datetime
import decimal
import os
import pickle
import uuid

import pytest

from config import cache_serializer
from config.cache_serializer import RestrictedPickleSerializer, restricted_loads

IRIS_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
REDIS_URL = os.environ.get("REDIS_URL", "")
needs_redis = pytest.mark.skipif(
    not REDIS_URL.startswith("redis"), reason="needs Redis: set REDIS_URL=redis://..."
)


class _RunsCode:
    """Pickles as a call of `call(*args)`: what an attacker writes."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def _hostile(marker) -> list[bytes]:
    import builtins
    import subprocess

    command = f"touch {marker}"
    return [
        pickle.dumps(_RunsCode(os.system, command)),
        pickle.dumps(_RunsCode(subprocess.call, ["sh", "-c", command])),
        pickle.dumps(_RunsCode(builtins.exec, f"open({str(marker)!r}, 'w')")),
        pickle.dumps(_RunsCode(getattr, "text", "upper")),
        # A global named through the older protocol's opcodes, and a persistent id.
        b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.",
        b"\x80\x02P0\n.",
    ]


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    for data in _hostile(marker):
        with pytest.raises(pickle.UnpicklingError):
            restricted_loads(data)
    assert not marker.exists()


def test_the_serializer_reads_a_refused_value_as_a_miss_and_says_so(
    tmp_path, caplog, cache_refusals_expected
):
    marker = tmp_path / "ran"
    serializer = RestrictedPickleSerializer({})
    before = cache_serializer.refusals
    hostile = _hostile(marker)
    assert [serializer.loads(data) for data in hostile] == [None] * len(hostile)
    assert not marker.exists()
    assert cache_serializer.refusals == before + len(hostile)
    assert "cache value refused: global posix.system is not on the allow-list" in caplog.text
    # Torn bytes are a miss as well, not an error for the caller.
    assert serializer.loads(pickle.dumps({"a": 1})[:-3]) is None


def test_plain_values_need_no_global_and_come_back_equal():
    serializer = RestrictedPickleSerializer({})
    values = [
        None,
        {"prediction": "setosa", "confidence": 0.97, "probabilities": {"setosa": 0.97}},
        ["a", 1, 2.5, True, None, b"\x00bytes"],
        ("t", (1, 2)),
        {1, 2},
        frozenset({"x"}),
        bytearray(b"ab"),
        complex(1, 2),
        "*",
        datetime.datetime(2026, 12, 1, 18, 0, tzinfo=datetime.UTC),
        datetime.date(2026, 12, 1),
        datetime.timedelta(seconds=5),
        decimal.Decimal("1.50"),
        uuid.UUID(int=7),
    ]
    for value in values:
        assert serializer.loads(serializer.dumps(value)) == value


@pytest.mark.django_db
def test_what_the_serving_path_caches_comes_back_whole(iris_model, client_user):
    """The routing entry (with its versions) and the token entry (the user and the token, model
    instances) as the serving code builds them."""
    from knox.models import AuthToken

    from predictions.serving.routing import routing_entry_from_db
    from tests.predictions.conftest import iris_version, promote

    promote(iris_version(iris_model))
    serializer = RestrictedPickleSerializer({})
    entry = routing_entry_from_db(name="iris")
    again = serializer.loads(serializer.dumps(entry))
    assert again == entry
    assert again.production is not None and again.versions[again.production].schema

    token, _ = AuthToken.objects.create(user=client_user)
    token = AuthToken.objects.select_related("user").get(pk=token.pk)
    user, token_again = serializer.loads(serializer.dumps((client_user, token)))
    assert (user.pk, user.username, user.is_active) == (
        client_user.pk,
        client_user.username,
        True,
    )
    assert token_again.pk == token.pk and token_again.user.pk == client_user.pk
    assert token_again.created == token.created


def test_a_marked_class_is_allowed_and_an_unmarked_one_is_not():
    from predictions.serving.types import VersionInfo

    assert cache_serializer.global_allowed(VersionInfo.__module__, "VersionInfo")
    assert cache_serializer.global_allowed("django.db.models.base", "model_unpickle")
    assert not cache_serializer.global_allowed("predictions.serving.core", "serve")
    assert not cache_serializer.global_allowed("django.db.models.base", "Model")


@needs_redis
@pytest.mark.django_db
def test_values_planted_in_redis_under_the_serving_keys_run_nothing(
    tmp_path, settings, iris_model, client_user, cache_refusals_expected
):
    """With the product's Redis cache: a hostile value under the routing key, the token key and
    a result key makes those reads misses; the request is answered from the database, runs
    nothing, and the product's own entries replace the planted ones."""
    import redis
    from django.core.cache import caches

    from mlregistry.selectors import routing_cache_key
    from predictions.auth import auth_cache_key, hash_token
    from tests.conftest import _api_client
    from tests.predictions.conftest import iris_version, promote

    settings.CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": f"mlr-refuse-{uuid.uuid4().hex[:8]}",
            "OPTIONS": {"SERIALIZER": "config.cache_serializer.RestrictedPickleSerializer"},
        }
    }
    backend = caches["default"]
    promote(iris_version(iris_model))
    from tests import factories

    token = factories.token_create(client_user)
    marker = tmp_path / "ran"
    hostile = pickle.dumps(_RunsCode(os.system, f"touch {marker}"))
    raw = redis.Redis.from_url(REDIS_URL)
    keys = [routing_cache_key("iris"), auth_cache_key(hash_token(token))]
    try:
        for key in keys:
            raw.set(backend.make_key(key), hostile, ex=60)
        before = cache_serializer.refusals
        api = _api_client(client_user)
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        answer = api.post("/api/v1/models/iris/predict", {"features": IRIS_ROW}, format="json")
        assert answer.status_code == 200, answer.content
        assert answer.json()["model_version"] == 1
        assert not marker.exists()
        assert cache_serializer.refusals > before
        # The planted bytes were replaced by the product's own entries, read back as such.
        assert backend.get(routing_cache_key("iris")).name == "iris"
        assert raw.get(backend.make_key(keys[0])) != hostile
    finally:
        backend.clear()
