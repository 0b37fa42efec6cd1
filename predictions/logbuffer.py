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
import io
import logging
import multiprocessing.util
import os
import threading
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from django.conf import settings
from django.db import (
    DatabaseError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
    transaction,
)

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


# COPY's text format: a tab between columns, \N for NULL, and a backslash escapes the
# characters that would end a value. NUL can't be stored in a Postgres text value at all.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\x00": ""})
_STAGING = "predictions_predictionlog_incoming"


def _copy_text(value: str | None) -> str:
    return "\\N" if value is None else value.translate(_COPY_ESCAPES)


def _copy_json(value: Any) -> str:
    if value is None:
        return "\\N"
    text = orjson.dumps(value).decode()
    if "\\u0000" in text:  # valid JSON, but jsonb can't hold NUL: dropped, like in _copy_text
        text = orjson.dumps(_without_nul(value)).decode()
    # orjson escapes control characters inside JSON strings: only backslashes need doubling.
    return text.replace("\\", "\\\\")


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nul(v) for v in value]
    return value


def _copy_line(r: LogRow) -> str:
    return "\t".join(
        (
            _copy_text(r.request_id),
            str(r.row_index),
            str(r.model_id),
            str(r.version_id),
            _copy_json(r.features()),
            _copy_json(r.output),
            "\\N" if r.confidence is None else repr(float(r.confidence)),
            repr(float(r.latency_ms)),
            "t" if r.cached else "f",
            _copy_text(r.client_id),
            "\\N" if r.served_to_id is None else str(r.served_to_id),
            r.created_at.isoformat(),
        )
    )


def _write_postgres(rows: list[LogRow]) -> None:
    """One COPY straight into the log. COPY keeps the Python side of a flush to building one
    string (the flusher holds the GIL the request threads need: a 1,000-row execute_values held
    it ~25 ms), and Postgres' side to the rows and their indexes.

    A client may resend its X-Request-ID (a retry); then the COPY meets the unique key and the
    batch goes through a session-temporary staging table instead, inserted with ON CONFLICT DO
    NOTHING: rows already logged are kept as they are, and another client's rows under that id
    are never touched (the key includes the served user)."""
    from predictions.models import PredictionLog

    table = connection.ops.quote_name(PredictionLog._meta.db_table)
    data = io.StringIO("".join(_copy_line(r) + "\n" for r in rows))
    with transaction.atomic(), connection.cursor() as cursor:
        # A log row lost to a database crash in the next ~second is acceptable (the log is
        # sampling for drift and audit); not waiting for the WAL flush keeps flushes short.
        cursor.execute("SET LOCAL synchronous_commit = off")
        try:
            with transaction.atomic(), connection.wrap_database_errors:
                cursor.cursor.copy_expert(f"COPY {table} ({_COLUMNS}) FROM STDIN", data)
            return
        except IntegrityError:
            data.seek(0)
        cursor.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_STAGING} ON COMMIT DELETE ROWS AS "  # noqa: S608
            f"SELECT {_COLUMNS} FROM {table} WITH NO DATA"
        )
        with connection.wrap_database_errors:  # psycopg2's errors as Django's, as execute() does
            cursor.cursor.copy_expert(f"COPY {_STAGING} ({_COLUMNS}) FROM STDIN", data)
        # Moved, not copied: inside a longer transaction (an inline flush) the staging table
        # is not emptied by a commit before the next batch.
        cursor.execute(
            f"WITH staged AS (DELETE FROM {_STAGING} RETURNING {_COLUMNS}) "  # noqa: S608
            f"INSERT INTO {table} ({_COLUMNS}) SELECT {_COLUMNS} FROM staged "
            "ON CONFLICT DO NOTHING"
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


def _of_existing_versions(rows: list[LogRow]) -> list[LogRow]:
    """The rows whose version still exists: one served just before its version's delete
    committed must not be written after it (the log's keys are no database constraints, so
    nothing else would stop an orphan row). One indexed query per flush."""
    from mlregistry.models import ModelVersion

    ids = {r.version_id for r in rows}
    existing = set(ModelVersion.objects.filter(pk__in=ids).values_list("pk", flat=True))
    if len(existing) == len(ids):
        return rows
    kept = [r for r in rows if r.version_id in existing]
    logger.info(
        "prediction log rows of deleted versions dropped", extra={"rows": len(rows) - len(kept)}
    )
    return kept


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
        """Writes every waiting row; returns how many were written.

        A batch the database refuses for its content is written again row by row, so one row
        it can't store costs only itself. While the database can't be reached, the rows go
        back to the buffer for the next flush (within PREDICTION_LOG_BUFFER_MAX)."""
        with self._flush_lock:
            with self._lock:
                rows, self._rows = self._rows, []
            if not rows:
                return 0
            write = _write_postgres if connection.vendor == "postgresql" else _write_orm
            try:
                rows = _of_existing_versions(rows)
                if not rows:
                    return 0
                write(rows)
            except (OperationalError, InterfaceError):
                self._put_back(rows)
                logger.warning("prediction log flush failed; will retry", extra={"rows": len(rows)})
                return 0
            except DatabaseError:
                written = 0
                for row in rows:
                    try:
                        write([row])
                        written += 1
                    except DatabaseError:
                        PREDICTION_LOG_DROPPED.inc()
                        logger.exception(
                            "prediction log row refused by the database",
                            extra={"request_id": row.request_id, "row_index": row.row_index},
                        )
                PREDICTION_LOG_WRITTEN.inc(written)
                return written
            except Exception:
                PREDICTION_LOG_DROPPED.inc(len(rows))
                logger.exception("prediction log flush failed", extra={"rows": len(rows)})
                return 0
            PREDICTION_LOG_WRITTEN.inc(len(rows))
            return len(rows)

    def _put_back(self, rows: list[LogRow]) -> None:
        with self._lock:
            room = settings.PREDICTION_LOG_BUFFER_MAX - len(self._rows)
            if room < len(rows):
                PREDICTION_LOG_DROPPED.inc(len(rows) - max(room, 0))
                rows = rows[len(rows) - max(room, 0) :]  # the newest are kept
            self._rows[:0] = rows

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
