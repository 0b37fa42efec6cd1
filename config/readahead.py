"""Cache reads and counter increments made ahead, in one round trip, for the request this
thread is serving.

A predict request needs several small things from the shared cache: the token's user, the
model's routing entry, the caller's access policy, the throttle counter and (when it can be
guessed) the cached result. Asked one by one they cost a Redis round trip each, and on a busy
machine every round trip is a context switch: that was most of a predict request's time. The
predict views fetch them all in one pipeline (predictions.cache.cache_prefetch) and park the
answers here; the code that owns each value (authentication, the access check, the throttle)
takes its answer from here if it was fetched, else asks the cache itself as before.

Nothing here decides anything: a value read ahead is exactly what the owner would have read.
"""

from __future__ import annotations

import threading
from typing import Any

MISSING: Any = object()  # "not read ahead": the caller must ask the cache itself

_local = threading.local()


def readahead_set(values: dict[str, Any], counts: dict[str, int] | None = None) -> None:
    """Parks `values` (key -> value, None for a cache miss) and incremented `counts`."""
    _local.values = values
    _local.counts = counts or {}


def readahead_clear() -> None:
    _local.values = None
    _local.counts = None


def readahead_take(key: str) -> Any:
    """The value read ahead for `key` (None: it was not in the cache), once; else MISSING."""
    values = getattr(_local, "values", None)
    if values and key in values:
        return values.pop(key)
    return MISSING


def readahead_count(key: str) -> int | None:
    """The counter value after the increment made ahead for `key`, once; else None."""
    counts = getattr(_local, "counts", None)
    if counts and key in counts:
        return counts.pop(key)
    return None
