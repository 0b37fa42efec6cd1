"""The shared cache as the serving path uses it: failures are counted, logged and survived.

Redis being down or slow must not fail a prediction, so every call here catches the error,
counts it in mlregistry_cache_requests_total{result="error"}, logs (at most once per
PREDICTION_CACHE_RETRY_SECONDS) and then skips the cache for that long instead of paying a
socket timeout on every request. This is local to the predict path on purpose: elsewhere a
cache error should still be loud (no global DJANGO_REDIS_IGNORE_EXCEPTIONS).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache

from predictions.metrics import CACHE_REQUESTS

logger = logging.getLogger(__name__)

_MISSING = object()
_lock = threading.Lock()
# Values fetched ahead in one round trip for the request this thread is serving.
_prefetched = threading.local()
_state = {"skip_until": 0.0, "errors_since_log": 0}


def cache_is_process_local() -> bool:
    """True when the cache lives in this process only (the embedded local-memory default)."""
    return isinstance(caches["default"], LocMemCache)


def cache_available() -> bool:
    return time.monotonic() >= _state["skip_until"]


def cache_reset() -> None:
    """Forgets a previous failure (tests, and a readiness probe that found the cache healthy)."""
    with _lock:
        _state["skip_until"] = 0.0
        _state["errors_since_log"] = 0


def _failed(operation: str, exc: Exception) -> None:
    CACHE_REQUESTS.labels(result="error").inc()
    now = time.monotonic()
    with _lock:
        _state["errors_since_log"] += 1
        already_skipping = now < _state["skip_until"]
        _state["skip_until"] = now + settings.PREDICTION_CACHE_RETRY_SECONDS
        count = _state["errors_since_log"]
        if already_skipping:
            return
        _state["errors_since_log"] = 0
    logger.warning(
        "cache unavailable, serving uncached for %.1fs",
        settings.PREDICTION_CACHE_RETRY_SECONDS,
        extra={"operation": operation, "error": f"{type(exc).__name__}: {exc}", "errors": count},
    )


def cache_prefetch(keys: list[str]) -> None:
    """Fetches several keys in one round trip; the next cache_get of each is answered from it.

    Every round trip to Redis costs a context switch on a busy machine: the predict path
    needs the token's and the model's routing entries, and asks for both at once.
    """
    found: dict[str, Any] = {}
    if cache_available():
        try:
            found = caches["default"].get_many(keys)
        except Exception as exc:
            _failed("get_many", exc)
    _prefetched.values = {key: found.get(key, _MISSING) for key in keys}


def cache_prefetch_clear() -> None:
    _prefetched.values = None


def cache_get(key: str) -> Any:
    """The cached value, or None on a miss or when the cache is failing."""
    ahead = getattr(_prefetched, "values", None)
    if ahead and key in ahead:
        value = ahead.pop(key)
        return None if value is _MISSING else value
    if not cache_available():
        return None
    try:
        return caches["default"].get(key)
    except Exception as exc:
        _failed("get", exc)
        return None


def cache_set(key: str, value: Any, timeout: float) -> bool:
    if not cache_available():
        return False
    try:
        caches["default"].set(key, value, timeout)
    except Exception as exc:
        _failed("set", exc)
        return False
    return True


def cache_delete_many(keys: list[str]) -> None:
    # Not skipped while the cache is failing: a revocation must reach it the moment it can.
    try:
        caches["default"].delete_many(keys)
    except Exception as exc:
        _failed("delete", exc)


class _WriteBehind:
    """Result-cache writes queued off the request thread and sent in pipelined batches.

    Waiting for Redis to acknowledge a SET was a third of a cache-miss request's wall time.
    A write that is late or lost only costs a later miss: keys name the version and its sha256,
    so a delayed write can never make an answer stale.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[str, Any, float]] = queue.SimpleQueue()
        self._pid: int | None = None
        self._lock = threading.Lock()

    def put(self, key: str, value: Any, timeout: float) -> None:
        if self._pid != os.getpid():
            self._start()
        self._queue.put((key, value, timeout))

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():  # after a fork the parent's thread is gone
                return
            self._pid = os.getpid()
            self._queue = queue.SimpleQueue()
        threading.Thread(target=self._run, name="result-cache-writer", daemon=True).start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            batch = [first]
            while len(batch) < 500:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            by_timeout: dict[float, dict[str, Any]] = {}
            for key, value, timeout in batch:
                by_timeout.setdefault(timeout, {})[key] = value
            if not cache_available():
                continue
            for timeout, values in by_timeout.items():
                try:
                    caches["default"].set_many(values, timeout)
                except Exception as exc:
                    _failed("set_many", exc)


_write_behind = _WriteBehind()


def cache_set_later(key: str, value: Any, timeout: float) -> None:
    """cache_set without waiting for it (network caches); immediate for a local-memory cache."""
    if not settings.PREDICTION_CACHE_WRITE_BEHIND or cache_is_process_local():
        cache_set(key, value, timeout)
    elif cache_available():
        _write_behind.put(key, value, timeout)
