"""The prediction log's in-process buffer: rows are bulk-inserted off the request path.

A daemon thread flushes every PREDICTION_LOG_FLUSH_SECONDS, or sooner once
PREDICTION_LOG_FLUSH_ROWS rows wait; the process flushes at exit too (gunicorn's worker_exit
hook in deploy/gunicorn.conf.py, atexit, and multiprocessing's exit finalizers for granian's
workers). A crash loses at most one interval of rows: the log is for drift and audit sampling,
not billing. With PREDICTION_LOG_FLUSH_SECONDS=0 there is no
thread and a full buffer is flushed by the request that filled it (tests, one-off scripts).
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import os
import threading
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from django.conf import settings
from django.db import close_old_connections, connection, transaction

from predictions.metrics import PREDICTION_LOG_DROPPED, PREDICTION_LOG_WRITTEN

logger = logging.getLogger(__name__)


class LogRow(NamedTuple):
    """One served row, as cheap to build on the request thread as possible: the features
    become JSON only when the flusher writes them."""

    request_id: str
    row_index: int
    model_id: int
    version_id: int
    feature_names: tuple[str, ...] | None  # None: features are not stored
    feature_values: list[Any] | None
    output: Any
    confidence: float | None
    latency_ms: float
    cached: bool
    client_id: str
    served_to_id: int | None  # the authenticated user served (feedback is theirs to give)
    created_at: datetime

    def features(self) -> dict[str, Any] | None:
        if self.feature_names is None or self.feature_values is None:
            return None
        return dict(zip(self.feature_names, self.feature_values, strict=True))


_COLUMNS = (
    "request_id, row_index, model_id, version_id, features, output, confidence, latency_ms, "
    "cached, client_id, served_to_id, created_at"
)


def _json(value: Any) -> str | None:
    # orjson writes NaN (a missing optional feature) as null, which is what the log wants.
    return None if value is None else orjson.dumps(value).decode()


def _write_postgres(rows: list[LogRow]) -> None:
    """One multi-row INSERT per 1,000 rows, skipping the ORM's per-object work (it costs more
    than the prediction for a batch). ON CONFLICT: a client may resend its X-Request-ID (a retry);
    the key includes the served user, so another client's rows under that id are never touched."""
    from psycopg2.extras import execute_values

    from predictions.models import PredictionLog

    table = connection.ops.quote_name(PredictionLog._meta.db_table)
    values = [
        (
            r.request_id,
            r.row_index,
            r.model_id,
            r.version_id,
            _json(r.features()),
            orjson.dumps(r.output).decode(),
            r.confidence,
            r.latency_ms,
            r.cached,
            r.client_id,
            r.served_to_id,
            r.created_at,
        )
        for r in rows
    ]
    with transaction.atomic(), connection.cursor() as cursor:
        execute_values(
            cursor.cursor,
            f"INSERT INTO {table} ({_COLUMNS}) VALUES %s ON CONFLICT DO NOTHING",  # noqa: S608
            values,
            template="(%s, %s, %s, %s, %s::jsonb, %s::jsonb, %s, %s, %s, %s, %s, %s)",
            page_size=1000,
        )


def _write_orm(rows: list[LogRow]) -> None:
    from predictions.models import PredictionLog

    objects = [
        PredictionLog(
            request_id=r.request_id,
            row_index=r.row_index,
            model_id=r.model_id,
            version_id=r.version_id,
            features=orjson.loads(_json(r.features()) or "null"),
            output=r.output,
            confidence=r.confidence,
            latency_ms=r.latency_ms,
            cached=r.cached,
            client_id=r.client_id,
            served_to_id=r.served_to_id,
            created_at=r.created_at,
        )
        for r in rows
    ]
    PredictionLog.objects.bulk_create(objects, batch_size=1000, ignore_conflicts=True)


class PredictionLogBuffer:
    def __init__(self) -> None:
        self._rows: list[LogRow] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread_pid: int | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    def add(self, rows: list[LogRow]) -> None:
        """Queues served rows; never touches the database on this thread unless the
        background flusher is off."""
        with self._lock:
            room = settings.PREDICTION_LOG_BUFFER_MAX - len(self._rows)
            if room < len(rows):
                PREDICTION_LOG_DROPPED.inc(len(rows) - max(room, 0))
                rows = rows[: max(room, 0)]
            self._rows.extend(rows)
            waiting = len(self._rows)
        if waiting >= settings.PREDICTION_LOG_FLUSH_ROWS:
            if settings.PREDICTION_LOG_FLUSH_SECONDS > 0:
                self._wake.set()
            else:
                self.flush()
        if settings.PREDICTION_LOG_FLUSH_SECONDS > 0 and self._thread_pid != os.getpid():
            self._start_thread()

    def __len__(self) -> int:
        return len(self._rows)

    def flush(self) -> int:
        """Writes every waiting row; returns how many were written."""
        with self._flush_lock:
            with self._lock:
                rows, self._rows = self._rows, []
            if not rows:
                return 0
            try:
                if connection.vendor == "postgresql":
                    _write_postgres(rows)
                else:
                    _write_orm(rows)
            except Exception:
                PREDICTION_LOG_DROPPED.inc(len(rows))
                logger.exception("prediction log flush failed", extra={"rows": len(rows)})
                return 0
            PREDICTION_LOG_WRITTEN.inc(len(rows))
            return len(rows)

    def clear(self) -> None:
        with self._lock:
            self._rows = []

    def _start_thread(self) -> None:
        with self._lock:
            # After a fork (gunicorn workers) the parent's thread is gone: start one per process.
            if self._thread_pid == os.getpid():
                return
            self._thread_pid = os.getpid()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name="prediction-log-flusher", daemon=True
        )
        self._thread.start()
        atexit.register(self.stop)
        # A worker that is a multiprocessing child (granian's) ends with os._exit, where atexit
        # does not run; multiprocessing's own exit finalizers do.
        multiprocessing.util.Finalize(None, self.stop, exitpriority=10)

    def stop(self, timeout: float = 5.0) -> None:
        """Stops this process's flusher after a last flush (worker exit, tests)."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._stopping = True
            self._wake.set()
            thread.join(timeout)
        else:
            self.flush()

    def _run(self) -> None:
        while (interval := settings.PREDICTION_LOG_FLUSH_SECONDS) > 0:
            self._wake.wait(timeout=interval)
            self._wake.clear()
            try:
                close_old_connections()
                self.flush()
            except Exception:  # the flusher must outlive a bad moment of the database
                logger.exception("prediction log flusher error")
            if self._stopping:
                break
        connection.close()  # this thread's own connection
        with self._lock:
            self._thread_pid = None  # switched off: a later add() may start a new one


prediction_log_buffer = PredictionLogBuffer()
