"""Fetching a request's read-ahead plan (config/readahead.py) in one round trip, and the
result-cache writes that ride along."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from django.conf import settings
from django.core.cache import caches

from config.cache_outage import cache_available, cache_failed, deletes_pending_sent
from config.readahead import ReadAheadPlan, readahead_set
from predictions.cache import cache_is_process_local, cache_set
from predictions.serving.pipeline import CommandBatch, RedisPipeline

_pipeline = RedisPipeline()


def prefetch(plan: ReadAheadPlan) -> None:
    """Reads the plan's keys and increments its counters in one round trip, and parks the
    answers in config.readahead for the code that owns each value.

    With Redis this is one pipeline (MGET, then SET NX EX + INCR per counter, then the waiting
    result-cache writes); with another backend the keys are read with get_many and counters are
    left to their owners. On a cache failure nothing is parked, so every owner falls back to its
    own (skipped) cache call."""
    values: dict[str, Any] = {}
    counts: dict[str, int] = {}
    # Deletes an outage kept back go first, or this read would bring back what they drop.
    if cache_available() and deletes_pending_sent():
        backend = caches["default"]
        try:
            if _is_redis(backend):
                values, counts = _redis_prefetch(backend.client, plan)
            elif plan.keys:
                found = backend.get_many(plan.keys)
                values = {key: found.get(key) for key in plan.keys}
        except Exception as exc:
            cache_failed("prefetch", exc)
            values, counts = {}, {}
    readahead_set(values, counts)


def _is_redis(backend: Any) -> bool:
    return hasattr(getattr(backend, "client", None), "get_client")


def _redis_prefetch(client: Any, plan: ReadAheadPlan) -> tuple[dict[str, Any], dict[str, int]]:
    batch = CommandBatch()
    keys = plan.keys
    values_reply = batch.add("MGET", *[client.make_key(key) for key in keys]) if keys else None
    counters = []
    for key, window in plan.increments:
        made = client.make_key(key)
        # Create the window's counter with its lifetime if it does not exist yet, then count.
        # (SET NX EX + INCR rather than INCR + EXPIRE NX: the latter needs Redis 7.)
        batch.add("SET", made, 0, "EX", window + 1, "NX")
        counters.append((key, batch.add("INCR", made)))
    # Result-cache writes of earlier requests ride along (their replies are not needed).
    for key, value, timeout in _write_behind.take():
        batch.add("SET", client.make_key(key), client.encode(value), "PX", int(timeout * 1000))
    _pipeline.send(client.get_client(write=True), batch)
    values: dict[str, Any] = {}
    if values_reply is not None:
        shared = plan.shared
        values = {
            key: None
            if raw is None
            else _shared_decodes.decode(client, key, raw)
            if key in shared
            else client.decode(raw)
            for key, raw in zip(keys, batch[values_reply], strict=True)
        }
    return values, {key: int(batch[reply]) for key, reply in counters}


class SharedDecodes:
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


_shared_decodes = SharedDecodes()


class WriteBehind:
    """Result-cache writes, off the request's critical path.

    Waiting for Redis to acknowledge a SET was a third of a cache-miss request's wall time, and
    waking a writer thread for every write made the request thread wait for the GIL. So a write
    waits here and travels in the *next* predict request's read-ahead pipeline (no round trip
    of its own); what no request carries within PREDICTION_CACHE_WRITE_DELAY seconds, a
    background thread sends in one pipelined batch. A write that is late or lost only costs a
    later miss: keys name the version and its sha256, so a delayed write can never make an
    answer stale.

    `start_thread=False` (tests) never starts the background thread, so a write reaches the
    cache only by a request's pipeline or `flush`.
    """

    MAX_PENDING = 10_000  # past this (Redis slow or gone), new writes are dropped

    def __init__(self, *, start_thread: bool = True) -> None:
        self._pending: list[tuple[str, Any, float]] = []
        self._pid: int | None = None if start_thread else os.getpid()
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        return len(self._pending)

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
                cache_failed("set_many", exc)


_write_behind = WriteBehind()


def write_behind_use(writer: WriteBehind) -> WriteBehind:
    """Makes `writer` the process's result-cache writer (tests); returns the previous one."""
    global _write_behind
    previous, _write_behind = _write_behind, writer
    return previous


def pinned_connection() -> Any:
    """The Redis connection this thread's read-ahead holds, or None (tests)."""
    return _pipeline.connection


def cache_set_later(key: str, value: Any, timeout: float) -> None:
    """A result-cache write without waiting for it (network caches); immediate for a
    local-memory cache."""
    if not settings.PREDICTION_CACHE_WRITE_BEHIND or cache_is_process_local():
        cache_set(key, value, timeout)
    elif cache_available():
        _write_behind.put(key, value, timeout)


def cache_writes_flush() -> None:
    """Sends the waiting result-cache writes now (tests, and a process about to exit)."""
    _write_behind.flush()
