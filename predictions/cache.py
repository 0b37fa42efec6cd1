"""The shared cache as the serving path uses it: failures are counted, logged and survived.

Redis being down or slow must not fail a prediction, so every call here catches the error,
counts it in mlregistry_cache_requests_total{result="error"}, logs (at most once per
PREDICTION_CACHE_RETRY_SECONDS) and then skips the cache for that long instead of paying a
socket timeout on every request; tokens, access policies and routing then come from a short
per-process memo (config/cache_outage.py). This is local to the serving path on purpose:
elsewhere a cache error should still be loud (no global DJANGO_REDIS_IGNORE_EXCEPTIONS).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

try:
    import hiredis
except ImportError:  # pragma: no cover - hiredis is in requirements.txt
    hiredis = None

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.locmem import LocMemCache

from config.cache_outage import (
    cache_available,
    cache_failed,
    failure_hooks,
    guarded_delete_many,
    guarded_get,
    guarded_set,
    memo_put,
)
from config.cache_outage import cache_reset as cache_reset  # re-exported for tests
from config.readahead import MISSING, readahead_clear, readahead_set, readahead_take
from predictions.metrics import CACHE_REQUESTS

logger = logging.getLogger(__name__)


def cache_is_process_local() -> bool:
    """True when the cache lives in this process only (the embedded local-memory default)."""
    return isinstance(caches["default"], LocMemCache)


def _failed(operation: str, exc: Exception) -> None:
    cache_failed(operation, exc)


def _count_failure(operation: str) -> None:
    CACHE_REQUESTS.labels(result="error").inc()


# Every failed cache call in this process is counted, whichever module made it.
failure_hooks.append(_count_failure)


def cache_prefetch(
    keys: list[str], increments: list[tuple[str, int]] = (), *, shared: frozenset[str] = frozenset()
) -> None:
    """Reads `keys` and increments the counters in `increments` ((key, window seconds)) in one
    round trip, and parks the answers in config.readahead for the code that owns each value.

    Values of the keys in `shared` may be decoded once per distinct stored value and handed to
    every request that reads the same bytes (see _SharedDecodes): only for keys whose owners
    never change what they get.

    With Redis this is one pipeline (MGET, then SET NX EX + INCR per counter); with another
    backend the keys are read with get_many and counters are left to their owners. On a cache
    failure nothing is parked, so every owner falls back to its own (skipped) cache call.
    """
    values: dict[str, Any] = {}
    counts: dict[str, int] = {}
    if cache_available():
        backend = caches["default"]
        try:
            if _is_redis(backend):
                values, counts = _redis_prefetch(backend, keys, increments, shared)
            else:
                found = backend.get_many(keys)
                values = {key: found.get(key) for key in keys}
        except Exception as exc:
            _failed("prefetch", exc)
            values, counts = {}, {}
    readahead_set(values, counts)


def _is_redis(backend: Any) -> bool:
    return hasattr(getattr(backend, "client", None), "get_client")


def _redis_prefetch(
    backend: Any,
    keys: list[str],
    increments: list[tuple[str, int]],
    shared: frozenset[str] = frozenset(),
) -> tuple[dict[str, Any], dict[str, int]]:
    client = backend.client
    commands: list[tuple[Any, ...]] = []
    if keys:
        commands.append(("MGET", *[client.make_key(key) for key in keys]))
    for key, window in increments:
        made = client.make_key(key)
        # Create the window's counter with its lifetime if it does not exist yet, then count.
        # (SET NX EX + INCR rather than INCR + EXPIRE NX: the latter needs Redis 7.)
        commands.append(("SET", made, 0, "EX", window + 1, "NX"))
        commands.append(("INCR", made))
    # Result-cache writes of earlier requests ride along (their replies are not needed).
    for key, value, timeout in _write_behind.take():
        commands.append(
            ("SET", client.make_key(key), client.encode(value), "PX", int(timeout * 1000))
        )
    results = _pipeline(client.get_client(write=True), commands)
    values: dict[str, Any] = {}
    if keys:
        raw = results[0]
        values = {
            key: None
            if value is None
            else _shared_decodes.decode(client, key, value)
            if key in shared
            else client.decode(value)
            for key, value in zip(keys, raw, strict=True)
        }
    first = 1 if keys else 0
    counts = {key: int(results[first + 2 * i + 1]) for i, (key, _) in enumerate(increments)}
    return values, counts


class _SharedDecodes:
    """The decoded value of the bytes last read for a key, per process.

    A steady stream of predictions reads the same token, routing and access entries again and
    again; unpickling them (two model instances for the token) was 80-110 us of a request's
    CPU. Here bytes equal to the last ones read for that key give back the object decoded then,
    so the value is exactly what decoding would give. Callers must treat it as read-only (the
    token's model instances are copied before they become request.user). Bounded: cleared past
    MAX_KEYS.
    """

    MAX_KEYS = 1024

    def __init__(self) -> None:
        self._last: dict[str, tuple[bytes, Any]] = {}

    def decode(self, client: Any, key: str, raw: bytes) -> Any:
        seen = self._last.get(key)
        if seen is not None and seen[0] == raw:
            return seen[1]
        value = client.decode(raw)
        if len(self._last) >= self.MAX_KEYS:
            self._last.clear()
        self._last[key] = (raw, value)
        return value


_shared_decodes = _SharedDecodes()
_pinned = threading.local()


def _pipeline(redis_client: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Sends `commands` in one write and reads their replies: what redis-py's Pipeline does,
    without its per-command bookkeeping (response callbacks, retries, command stacks) and
    without taking a connection from the pool and giving it back each time (a lock and
    bookkeeping on each side). Each request thread keeps one connection of the pool for itself.
    Those steps cost more CPU than the round trip itself for the few commands a request sends.
    An error reply or a socket error raises, and the connection is closed and given back rather
    than kept with replies still unread."""
    pool = redis_client.connection_pool
    conn = getattr(_pinned, "conn", None)
    if conn is None or _pinned.pool is not pool or _pinned.pid != os.getpid():
        conn = _pinned.conn = pool.get_connection()
        _pinned.pool, _pinned.pid = pool, os.getpid()
    try:
        conn.send_packed_command(_pack(conn, commands))
        return [conn.read_response() for _ in commands]
    except BaseException:
        _pinned.conn = None
        conn.disconnect()
        pool.release(conn)
        raise


def _pack(conn: Any, commands: list[tuple[Any, ...]]) -> list[bytes]:
    if hiredis is None:
        return conn.pack_commands(commands)
    return [b"".join([hiredis.pack_command(command) for command in commands])]


def cache_prefetch_clear() -> None:
    readahead_clear()


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


class _WriteBehind:
    """Result-cache writes, off the request's critical path.

    Waiting for Redis to acknowledge a SET was a third of a cache-miss request's wall time, and
    waking a writer thread for every write made the request thread wait for the GIL. So a write
    waits here and travels in the *next* predict request's read-ahead pipeline (no round trip
    of its own); what no request carries within PREDICTION_CACHE_WRITE_DELAY seconds, a
    background thread sends in one pipelined batch. A write that is late or lost only costs a
    later miss: keys name the version and its sha256, so a delayed write can never make an
    answer stale.
    """

    MAX_PENDING = 10_000  # past this (Redis slow or gone), new writes are dropped

    def __init__(self) -> None:
        self._pending: list[tuple[str, Any, float]] = []
        self._pid: int | None = None
        self._lock = threading.Lock()

    def put(self, key: str, value: Any, timeout: float) -> None:
        if self._pid != os.getpid():
            self._start()
        with self._lock:
            if len(self._pending) < self.MAX_PENDING:
                self._pending.append((key, value, timeout))

    def take(self) -> list[tuple[str, Any, float]]:
        """Every waiting write, for the caller to send (the read-ahead pipeline)."""
        if not self._pending:
            return []
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():  # after a fork the parent's thread is gone
                return
            self._pid = os.getpid()
            self._pending = []
        threading.Thread(target=self._run, name="result-cache-writer", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(settings.PREDICTION_CACHE_WRITE_DELAY)
            self.flush()

    def flush(self) -> None:
        batch = self.take()
        if not batch or not cache_available():
            return
        by_timeout: dict[float, dict[str, Any]] = {}
        for key, value, timeout in batch:
            by_timeout.setdefault(timeout, {})[key] = value
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


def cache_writes_flush() -> None:
    """Sends the waiting result-cache writes now (tests, and a process about to exit)."""
    _write_behind.flush()
