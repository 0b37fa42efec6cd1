"""The shared cache's serializer (config/cache_serializer.py): what the product caches comes back
whole; a value not signed with this SECRET_KEY, or naming a global off the allow-list, reads as
a miss and runs nothing; a signed value moved under another key is not taken for that key's.
The Redis tests write raw bytes under the product's own keys with redis-py and need REDIS_URL
(set by .ci/run)."""

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
        # Not code, but memory: a 34-byte pickle that allocates 300 MB.
        b"\x80\x04\x8c\x08builtins\x94\x8c\tbytearray\x94\x93J"
        + (300_000_000).to_bytes(4, "little")
        + b"\x85R.",
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
    # Unsigned (what someone without SECRET_KEY can write): refused before unpickling.
    assert [serializer.loads(data) for data in hostile] == [None] * len(hostile)
    assert "the value is not signed with this SECRET_KEY" in caplog.text
    # Signed (SECRET_KEY leaked): the allow-list still refuses them.
    signed = [cache_serializer._tag(data) + data for data in hostile]
    assert [serializer.loads(data) for data in signed] == [None] * len(hostile)
    assert "cache value refused: global posix.system is not on the allow-list" in caplog.text
    assert not marker.exists()
    assert cache_serializer.refusals == before + 2 * len(hostile)
    # Torn bytes are a miss as well, not an error for the caller.
    assert serializer.loads(serializer.dumps({"a": 1})[:-3]) is None


def test_a_value_signed_with_another_secret_key_is_a_miss(settings, cache_refusals_expected):
    serializer = RestrictedPickleSerializer({})
    written = serializer.dumps({"prediction": 1})
    assert serializer.loads(written) == {"prediction": 1}
    settings.SECRET_KEY = "another-" + settings.SECRET_KEY
    assert serializer.loads(written) is None


def test_plain_values_need_no_global_and_come_back_equal():
    serializer = RestrictedPickleSerializer({})
    values = [
        None,
        {"prediction": "setosa", "confidence": 0.97, "probabilities": {"setosa": 0.97}},
        ["a", 1, 2.5, True, None, b"\x00bytes"],
        ("t", (1, 2)),
        {1, 2},
        frozenset({"x"}),
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


@pytest.fixture
def redis_cache(settings):
    """The product's Redis cache, under a key prefix of this test's own; (backend, redis-py)."""
    import redis
    from django.core.cache import caches

    settings.CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": f"mlr-refuse-{uuid.uuid4().hex[:8]}",
            "VERSION": 2,
            "OPTIONS": {"SERIALIZER": "config.cache_serializer.RestrictedPickleSerializer"},
        }
    }
    backend = caches["default"]
    yield backend, redis.Redis.from_url(REDIS_URL)
    backend.clear()


def _predict(token: str):
    from rest_framework.test import APIClient

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return api.post("/api/v1/models/iris/predict", {"features": IRIS_ROW}, format="json")


@needs_redis
@pytest.mark.django_db
def test_values_planted_in_redis_under_the_serving_keys_run_nothing(
    tmp_path, redis_cache, iris_model, client_user, cache_refusals_expected
):
    """A hostile value under the routing key, its generation key and the token key makes
    those reads misses: the request is answered from the database, runs nothing, and the
    product's own entries replace the planted ones (the add-only generation key too)."""
    from mlregistry.selectors import routing_cache_key, routing_generation_key
    from predictions.auth import auth_cache_key, hash_token
    from tests import factories
    from tests.predictions.conftest import iris_version, promote

    backend, raw = redis_cache
    promote(iris_version(iris_model))
    token = factories.token_create(client_user)
    marker = tmp_path / "ran"
    hostile = pickle.dumps(_RunsCode(os.system, f"touch {marker}"))
    keys = [
        routing_cache_key("iris"),
        routing_generation_key("iris"),
        auth_cache_key(hash_token(token)),
    ]
    for key in keys:
        raw.set(backend.make_key(key), hostile, ex=60)
    before = cache_serializer.refusals
    answer = _predict(token)
    assert answer.status_code == 200, answer.content
    assert answer.json()["model_version"] == 1
    assert not marker.exists()
    assert cache_serializer.refusals > before
    assert all(raw.get(backend.make_key(key)) != hostile for key in keys)
    # Replaced by the product's own entries: the next request reads them, refusing nothing.
    before = cache_serializer.refusals
    # (The result written behind the first answer rides the second request's round trip.)
    assert [_predict(token).json()["cached"] for _ in range(2)] == [False, True]
    assert cache_serializer.refusals == before
    assert backend.get(routing_cache_key("iris")).name == "iris"


@needs_redis
@pytest.mark.django_db
def test_a_signed_entry_moved_under_another_key_is_not_taken_for_it(
    redis_cache, iris_model, client_user
):
    """Signatures do not bind values to keys, so the reads where a move would grant something
    check: a token entry copied under an invented token's key, and an unrestricted client's
    access entry copied under a restricted client's key, change nothing."""
    from mlregistry.access import access_cache_key
    from predictions.auth import auth_cache_key, hash_token
    from tests import factories
    from tests.predictions.conftest import iris_version, promote

    backend, raw = redis_cache
    promote(iris_version(iris_model))
    token = factories.token_create(client_user)
    assert _predict(token).status_code == 200
    invented = "f" * 64
    entry = raw.get(backend.make_key(auth_cache_key(hash_token(token))))
    assert entry is not None
    raw.set(backend.make_key(auth_cache_key(hash_token(invented))), entry, ex=60)
    assert _predict(invented).status_code == 401

    from mlregistry.models import ApiClientPolicy as Policy

    restricted = factories.user_create("restricted")
    Policy.objects.create(user=restricted).allowed_models.set(
        [factories.registered_model_create("wine")]
    )
    restricted_token = factories.token_create(restricted)
    assert _predict(restricted_token).status_code == 404
    unrestricted = raw.get(backend.make_key(access_cache_key(client_user.pk)))
    assert unrestricted is not None
    raw.set(backend.make_key(access_cache_key(restricted.pk)), unrestricted, ex=60)
    assert _predict(restricted_token).status_code == 404


@needs_redis
@pytest.mark.django_db
def test_a_token_entry_put_back_after_its_token_was_revoked_lives_no_longer_than_it_would_have(
    redis_cache, iris_model, client_user, settings
):
    """A signed entry can be saved and written back by someone with Redis access; it holds its
    own expiry, so a revoked token's entry answers no longer than it would have lived."""
    import time

    from knox.models import AuthToken

    from predictions.auth import auth_cache_key, hash_token
    from tests import factories
    from tests.predictions.conftest import iris_version, promote

    settings.PREDICTION_AUTH_CACHE_SECONDS = 1
    backend, raw = redis_cache
    promote(iris_version(iris_model))
    token = factories.token_create(client_user)
    key = backend.make_key(auth_cache_key(hash_token(token)))
    assert _predict(token).status_code == 200
    saved = raw.get(key)
    assert saved is not None
    AuthToken.objects.filter(user=client_user).delete()  # revoked: the entry is dropped
    time.sleep(1.1)
    raw.set(key, saved)  # put back, without its lifetime
    assert _predict(token).status_code == 401


def test_values_signed_with_a_fallback_key_are_read_during_a_rotation(settings):
    serializer = RestrictedPickleSerializer({})
    written = serializer.dumps({"prediction": 1})
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "rotated-" + settings.SECRET_KEY
    assert serializer.loads(written) == {"prediction": 1}
