"""The prediction log's in-process buffer: rows are bulk-inserted off the request path.

A daemon thread flushes every PREDICTION_LOG_FLUSH_SECONDS, or sooner once
PREDICTION_LOG_FLUSH_ROWS rows wait; the process flushes at exit too (gunicorn's worker_exit
hook in config/gunicorn.py, and atexit). A crash loses at most one interval of rows: the log
is for drift and audit sampling, not billing. With PREDICTION_LOG_FLUSH_SECONDS=0 there is no
thread and a full buffer is flushed by the request that filled it (tests, one-off scripts).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection

from predictions.metrics import PREDICTION_LOG_DROPPED, PREDICTION_LOG_WRITTEN

logger = logging.getLogger(__name__)


class PredictionLogBuffer:
    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread_pid: int | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Queues PredictionLog field dicts; never touches the database on this thread unless
        the background flusher is off."""
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
        from predictions.models import PredictionLog

        with self._flush_lock:
            with self._lock:
                rows, self._rows = self._rows, []
            if not rows:
                return 0
            try:
                # ignore_conflicts: a client may reuse an X-Request-ID; one duplicate must not
                # cost the rest of the batch.
                PredictionLog.objects.bulk_create(
                    [PredictionLog(**row) for row in rows], batch_size=1000, ignore_conflicts=True
                )
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
