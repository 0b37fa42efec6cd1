"""The shared cache's serializer: values are pickled and signed on the way in; on the way out
the signature is checked, then the pickle is read by an unpickler that imports nothing but an
exact allow-list of globals.

django-redis pickles what it stores (its default PickleSerializer), and `pickle.loads` imports
and calls whatever the bytes name: anyone who can write to Redis (a neighbour on its network,
a leaked password, a shared instance) could run code in every web process and worker by
planting one value. The values this product caches are plain data (numbers, strings, bytes,
lists, tuples, dicts, sets), datetimes, the serving path's frozen dataclasses, and Django model
instances (the token cache keeps the token's user and token). Plain data needs no global at
all (pickle has opcodes for it); the rest is the list below, plus the classes an app marks
with `cache_value` (predictions.serving.types).

Signed: each value starts with an HMAC-SHA256 of its pickle under a key derived from
SECRET_KEY (which every replica and worker shares), so a value nobody with the key wrote reads
as a miss before anything is unpickled; the allow-list is the second wall, should the key leak.
A signature does not bind a value to its key, so the reads where moving a value from one key
to another would matter check what they read: the token entry holds the token's digest
(predictions.auth), the access entry its user (mlregistry.access), the routing entry its model
(predictions.serving.routing).

A Django model instance is rebuilt by `django.db.models.base.model_unpickle`, which only looks
the class up among the installed models (`apps.get_model`) and makes a bare instance of it;
its fields come from the pickle's state, never from a call the bytes choose.

A value refused (unsigned, signed with another key, or naming a global off the list) reads as
a miss (None): the caller computes the value again and its write replaces the refused one.
Each refusal is logged at ERROR and counted (`refusals`), since it means someone wrote to the
cache, SECRET_KEY changed, or a new cached type was not added here; the test suite fails on
any refusal it did not ask for. settings.CACHES sets a VERSION of its own for this format, so
values an older release wrote are never read.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import io
import logging
import pickle
import threading
from typing import Any, TypeVar

from django.conf import settings
from django_redis.serializers.pickle import PickleSerializer

logger = logging.getLogger(__name__)

# (module, qualified name) pairs any cached value may import, beyond the `cache_value` classes.
ALLOWED_GLOBALS = frozenset(
    {
        ("datetime", "date"),
        ("datetime", "datetime"),
        ("datetime", "time"),
        ("datetime", "timedelta"),
        ("datetime", "timezone"),
        ("decimal", "Decimal"),
        ("uuid", "UUID"),
        ("django.db.models.base", "model_unpickle"),
        ("django.db.models.base", "ModelState"),
    }
)

_registered: dict[tuple[str, str], type] = {}
_lock = threading.Lock()
refusals = 0

T = TypeVar("T", bound=type)


def cache_value(cls: T) -> T:
    """Class decorator: instances of `cls` may be read back from the shared cache. For plain
    data holders only (dataclasses): unpickling one calls `cls.__new__` and sets its state,
    so a class whose `__setstate__` or `__reduce__` acts must not be marked."""
    _registered[(cls.__module__, cls.__qualname__)] = cls
    return cls


def global_allowed(module: str, name: str) -> bool:
    """The one rule the unpickler applies: on ALLOWED_GLOBALS, or a `cache_value` class."""
    return (module, name) in ALLOWED_GLOBALS or (module, name) in _registered


class _CacheUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if not global_allowed(module, name):
            raise pickle.UnpicklingError(f"global {module}.{name} is not on the allow-list")
        return _registered.get((module, name)) or super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def restricted_loads(data: bytes) -> Any:
    """The value pickled in `data`, importing only allowed globals; pickle.UnpicklingError
    naming the global otherwise (and on malformed bytes, whatever pickle raises)."""
    return _CacheUnpickler(io.BytesIO(data)).load()


_TAG_BYTES = 32


@functools.cache
def _signing_key(secret: str) -> bytes:
    # A key of its own, derived from SECRET_KEY as Django derives its salted HMAC keys.
    return hashlib.sha256(b"model-registry.cache-values" + secret.encode()).digest()


def _tag(payload: bytes, secret: str | None = None) -> bytes:
    return hmac.digest(_signing_key(secret or settings.SECRET_KEY), payload, "sha256")


def _signed(tag: bytes, payload: bytes) -> bool:
    """Signed with SECRET_KEY, or with one of SECRET_KEY_FALLBACKS (as Django checks its own
    signatures), so replicas on either side of a key rotation read each other's values."""
    secrets = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    return any(hmac.compare_digest(tag, _tag(payload, secret)) for secret in secrets)


class RestrictedPickleSerializer(PickleSerializer):
    """django-redis serializer (OPTIONS["SERIALIZER"]): out, HMAC-SHA256 tag + pickle; in, the
    tag checked, then `restricted_loads`. A refused or unreadable value is None (a miss),
    logged and counted."""

    def dumps(self, value: Any) -> bytes:
        payload = super().dumps(value)
        return _tag(payload) + payload

    def loads(self, value: bytes) -> Any:
        global refusals
        try:
            tag, payload = value[:_TAG_BYTES], value[_TAG_BYTES:]
            if not _signed(tag, payload):
                raise pickle.UnpicklingError("the value is not signed with this SECRET_KEY")
            return restricted_loads(payload)
        except Exception as exc:
            with _lock:
                refusals += 1
            logger.error(
                "cache value refused: %s (someone else wrote to the cache, SECRET_KEY changed, "
                "or a cached type is missing from config/cache_serializer.py)",
                exc,
            )
            return None
