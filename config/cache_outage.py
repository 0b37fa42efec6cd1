"""The shared cache when it fails: one circuit breaker and one short memo per process.

When a cache call fails (Redis down or slow), the cache is skipped for
PREDICTION_CACHE_RETRY_SECONDS instead of paying a socket timeout on every call, and the outage
is logged once per retry period (no traceback per request). Meanwhile the values the serving
path needs on every request (tokens and access policies: keys starting with MEMO_PREFIXES)
come from a per-process memo of what was last read or written, each kept at most
CACHE_OUTAGE_MEMO_SECONDS; routing has its own memo (predictions/selectors.py, with the
shorter PREDICTION_ROUTING_LOCAL_TTL, as a promotion must be seen soon). A prediction then
costs no database query during an outage in steady state.

The memo trades freshness for availability the way a local-memory cache does: an invalidation
made by another process during the outage reaches this one within CACHE_OUTAGE_MEMO_SECONDS;
one made by this process drops the entry at once.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.core.cache import caches

logger = logging.getLogger(__name__)

# Keys every predict request reads: the token's user and the caller's access policy.
MEMO_PREFIXES = ("auth:", "access:")
_MEMO_MAX = 10_000

_lock = threading.Lock()
_state = {"skip_until": 0.0, "errors_since_log": 0}
_memo: dict[str, tuple[float, Any]] = {}
# Deletes that failed, in order: sent again before this process's next cache read or write
# once the cache answers, so an entry an invalidation missed during an outage does not come
# back with the cache (a changed access policy would otherwise grant its old access, and a
# promotion serve the old version, for the rest of the entry's TTL).
_pending: dict[str, None] = {}
_PENDING_MAX = 100_000
_PENDING_CHUNK = 1_000

# Called with the operation's name on every failure (predictions counts them in a metric).
failure_hooks: list[Callable[[str], None]] = []


def cache_available() -> bool:
    """False while the cache is being skipped after a failure."""
    return time.monotonic() >= _state["skip_until"]


def cache_reset() -> None:
    """Forgets a previous failure, the memo and the pending deletes (tests)."""
    with _lock:
        _state["skip_until"] = 0.0
        _state["errors_since_log"] = 0
        _memo.clear()
        _pending.clear()


def deletes_pending_add(keys: Iterable[str]) -> None:
    """Remembers keys whose delete failed, for this process to delete once the cache answers
    (before its next guarded read or write). Past _PENDING_MAX keys the oldest are dropped,
    logged: they then live out their TTL."""
    with _lock:
        for key in keys:
            _pending[key] = None
        overflow = len(_pending) - _PENDING_MAX
        for key in list(itertools.islice(_pending, max(overflow, 0))):
            del _pending[key]
    if overflow > 0:
        logger.error(
            "too many cache deletes pending; the oldest were dropped", extra={"dropped": overflow}
        )


def deletes_pending_sent() -> bool:
    """Sends the pending deletes, in chunks of _PENDING_CHUNK keys; True when none is left,
    False (the cache marked failing) when the cache still fails. Cheap when none is pending:
    the serving path calls it before every read-ahead, Celery before every task."""
    if _pending and not cache_available():
        return False
    while _pending:
        with _lock:
            keys = list(itertools.islice(_pending, _PENDING_CHUNK))
        try:
            caches["default"].delete_many(keys)
        except Exception as exc:
            cache_failed("delete", exc)
            return False
        with _lock:
            for key in keys:
                _pending.pop(key, None)
    return True


def cache_failed(operation: str, exc: BaseException) -> None:
    """Records a failed cache call: skip the cache for the retry period, log once per period."""
    for hook in failure_hooks:
        hook(operation)
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


def memo_put(key: str, value: Any, timeout: float | None = None) -> None:
    """Remembers a value read from or written to the cache, if the serving path needs it."""
    if value is None or not key.startswith(MEMO_PREFIXES):
        return
    seconds = settings.CACHE_OUTAGE_MEMO_SECONDS
    if timeout is not None:
        seconds = min(seconds, timeout)
    if len(_memo) >= _MEMO_MAX:
        _memo.clear()
    _memo[key] = (time.monotonic() + seconds, value)


def memo_get(key: str) -> Any:
    """The remembered value of `key` if still fresh, else None."""
    entry = _memo.get(key)
    if entry is None:
        return None
    if entry[0] < time.monotonic():
        _memo.pop(key, None)
        return None
    return entry[1]


def memo_forget(keys: Iterable[str]) -> None:
    for key in keys:
        _memo.pop(key, None)


def guarded_get(key: str) -> Any:
    """The cached value, or None on a miss; from the memo while the cache is failing."""
    if not cache_available() or (_pending and not deletes_pending_sent()):
        return memo_get(key)
    try:
        value = caches["default"].get(key)
    except Exception as exc:
        cache_failed("get", exc)
        return memo_get(key)
    memo_put(key, value)
    return value


def guarded_set(key: str, value: Any, timeout: float) -> bool:
    """Writes to the cache (and the memo); False when the cache is failing."""
    memo_put(key, value, timeout)
    if not cache_available() or (_pending and not deletes_pending_sent()):
        return False
    try:
        caches["default"].set(key, value, timeout)
    except Exception as exc:
        cache_failed("set", exc)
        return False
    return True


def guarded_delete_many(keys: list[str]) -> None:
    """Deletes keys; not skipped while failing: an invalidation must reach it when it can,
    and one that fails is sent again once the cache answers (deletes_pending_add)."""
    memo_forget(keys)
    try:
        caches["default"].delete_many(keys)
    except Exception as exc:
        deletes_pending_add(keys)
        cache_failed("delete", exc)
