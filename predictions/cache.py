"""The shared cache as the serving path uses it: failures are counted, logged and survived.

Redis being down or slow must not fail a prediction, so every call here catches the error,
counts it in mlregistry_cache_requests_total{result="error"}, logs (at most once per
PREDICTION_CACHE_RETRY_SECONDS) and then skips the cache for that long instead of paying a
socket timeout on every request; tokens, access policies and routing then come from a short
per-process memo (config/cache_outage.py). The read-ahead that fetches a request's keys in one
round trip is predictions.serving's. This is local to the serving path on purpose:
elsewhere a cache error should still be loud (no global DJANGO_REDIS_IGNORE_EXCEPTIONS).
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache

from config.cache_outage import (
    cache_available,  # noqa: F401 - re-exported: the serving path's one import of it
    failure_hooks,
    guarded_delete_many,
    guarded_get,
    guarded_set,
    memo_put,
)
from config.cache_outage import cache_reset as cache_reset  # re-exported for tests
from config.readahead import MISSING, readahead_take
from predictions.metrics import CACHE_REQUESTS

logger = logging.getLogger(__name__)


def cache_is_process_local() -> bool:
    """True when the cache lives in this process only (the embedded local-memory default)."""
    return isinstance(caches["default"], LocMemCache)


def _count_failure(operation: str) -> None:
    CACHE_REQUESTS.labels(result="error").inc()


# Every failed cache call in this process is counted, whichever module made it.
failure_hooks.append(_count_failure)


def cache_get(key: str) -> Any:
    """The cached value, or None on a miss; from the outage memo while the cache is failing."""
    ahead = readahead_take(key)
    if ahead is not MISSING:
        memo_put(key, ahead)
        return ahead
    return guarded_get(key)


def cache_set(key: str, value: Any, timeout: float) -> bool:
    return guarded_set(key, value, timeout)


def cache_delete_many(keys: list[str]) -> None:
    # Not skipped while the cache is failing: a revocation must reach it the moment it can.
    guarded_delete_many(keys)
