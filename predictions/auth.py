"""Token authentication for the predict path, with a short-lived cache of token -> user.

knox costs two queries per request (the token with its user, then all of that user's tokens to
sweep expired ones), which is most of the database work left on the predict path. Here a
verified token's user is cached for PREDICTION_AUTH_CACHE_SECONDS under the token's digest
(never the token itself). Deleting a token (revocation, logout, expiry sweep) or changing or
deleting its user drops the entries at once, so with the shared Redis cache revocation is
immediate; with the per-process local-memory cache another process may accept a revoked token
for at most PREDICTION_AUTH_CACHE_SECONDS. An expired token is refused even from the cache.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone
from drf_spectacular.contrib.knox_auth_token import KnoxTokenScheme
from knox.crypto import hash_token
from knox.models import AuthToken

from config.readahead import ORDER_AUTHENTICATION, ReadAheadPlan, readahead_register
from config.throttling import ThrottledTokenAuthentication
from predictions.cache import cache_delete_many, cache_get, cache_set


def auth_cache_key(digest: str) -> str:
    return f"auth:v1:{digest}"


# Token cache key -> the pk of the user the token belongs to, as this process last verified it.
# A token never changes hands, so this only says whose access policy and throttle counter to
# read ahead with the token; whether the token is still valid is decided by the cache entry (or
# the database) on every request. Bounded: cleared when it grows past _KNOWN_USERS_MAX.
_known_users: dict[str, int] = {}
_KNOWN_USERS_MAX = 10_000


def token_user_pk(token_key: str) -> int | None:
    """The user a token (by cache key) belonged to when this process last verified it."""
    return _known_users.get(token_key)


def token_user_forget(token_key: str) -> None:
    """Stops reading ahead for a token that was refused (revoked, expired, user deactivated)."""
    _known_users.pop(token_key, None)


def _remember(token_key: str, user_pk: int) -> None:
    if len(_known_users) >= _KNOWN_USERS_MAX:
        _known_users.clear()
    _known_users[token_key] = user_pk


def auth_cache_key_for_request(request) -> str | None:
    """The token cache key of a request's `Authorization: Bearer` header, if it has one."""
    parts = request.META.get("HTTP_AUTHORIZATION", "").split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    try:
        return auth_cache_key(hash_token(parts[1]))
    except (TypeError, ValueError):
        return None


def _read_ahead(plan: ReadAheadPlan) -> None:
    """The token's cache entry, and whose request this is (for the access policy and the
    throttle counter read after it) when this process verified the token before."""
    if settings.PREDICTION_AUTH_CACHE_SECONDS <= 0:
        return
    key = auth_cache_key_for_request(plan.request)
    if key is not None:
        plan.read(key, shared=True)  # copied before it becomes request.user (_own_copy)
        plan.user_pk = token_user_pk(key)


def _refused(plan: ReadAheadPlan) -> None:
    # Stop reading ahead for a token that was refused: requests with a revoked token must not
    # keep counting against its former user's budget.
    key = auth_cache_key_for_request(plan.request)
    if key is not None:
        token_user_forget(key)


readahead_register("authentication", _read_ahead, order=ORDER_AUTHENTICATION, on_refused=_refused)


class CachedTokenAuthentication(ThrottledTokenAuthentication):
    """A token found in the cache is accepted without a query; one that is not is looked up
    (after the refused-token budget of its address is checked, config/throttling.py)."""

    def authenticate_credentials(self, token: bytes):
        ttl = settings.PREDICTION_AUTH_CACHE_SECONDS
        if ttl <= 0:
            return super().authenticate_credentials(token)
        try:
            key = auth_cache_key(hash_token(token.decode("utf-8")))
        except (TypeError, ValueError, UnicodeDecodeError):
            return super().authenticate_credentials(token)
        hit = cache_get(key)
        if _token_entry_of(hit, key):
            user, auth_token, _ = hit
            if user.is_active and (auth_token.expiry is None or auth_token.expiry > timezone.now()):
                _remember(key, user.pk)
                # The user is copied: the read-ahead hands the same decoded objects to every
                # request with this token (predictions.serving), and a request may
                # change its user (Django caches permissions on it). The token is only read.
                return _own_copy(user), auth_token
        user, auth_token = super().authenticate_credentials(token)
        cache_set(key, (user, auth_token, time.time() + ttl), ttl)
        _remember(key, user.pk)
        return user, auth_token


def _token_entry_of(hit: Any, key: str) -> bool:
    """True when `hit` is a token entry (user, token, expiry as a Unix time) cached for `key`
    itself and not past its expiry: a signed entry copied under another token's key, or put
    back after it was dropped (a revoked token's), is a miss beyond the lifetime it had
    (config/cache_serializer.py signs values, it does not bind them to keys or times)."""
    return (
        isinstance(hit, tuple)
        and len(hit) == 3
        and isinstance(hit[0], get_user_model())
        and isinstance(hit[1], AuthToken)
        and auth_cache_key(hit[1].digest) == key
        and isinstance(hit[2], float)
        and hit[2] > time.time()
    )


def _own_copy(instance: Any) -> Any:
    """A shallow copy of a model instance with its own attributes and state (what changing it
    touches), without the pickling round trip copy.copy makes of a model (4x slower)."""
    new = instance.__class__.__new__(instance.__class__)
    state = copy.copy(instance._state)
    state.fields_cache = dict(instance._state.fields_cache)  # as Model.__getstate__ does
    new.__dict__ = {**instance.__dict__, "_state": state}
    return new


def auth_cache_forget_tokens(digests: list[str]) -> None:
    """Drops cached authentications of these token digests (revoked or their user changed)."""
    if digests:
        cache_delete_many([auth_cache_key(d) for d in digests])


class CachedTokenScheme(KnoxTokenScheme):
    """Documents the predict views' authentication: the same knox bearer token."""

    target_class = "predictions.auth.CachedTokenAuthentication"
    name = "knoxApiTokenPredict"  # one component per class, or drf-spectacular warns
