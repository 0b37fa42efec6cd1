"""Log plumbing: request ids on every line (one contextvar, set by the middleware and by Celery
tasks) and the optional LOG_FILE handler.

Why not logging.handlers.RotatingFileHandler: every web worker and Celery child is a separate
process with its own handler on the same file. Each would decide on its own to rotate, rename
the file under the others and keep writing to the renamed one; lines end up in the wrong file,
and a second rotation by another process overwrites a backup that still holds fresh lines.
The two handlers used instead are safe with any number of processes:

- external rotation (LOG_FILE_MAX_BYTES=0, the default): logging.handlers.WatchedFileHandler.
  Every process appends (O_APPEND, so lines from different processes never overwrite each
  other) and, before each line, compares the path's inode with its open file's: once logrotate
  has renamed the file, each process reopens the new one on its next line. No lock, no signal,
  no `copytruncate` (which loses the lines written between its copy and its truncate).
- in-app rotation (LOG_FILE_MAX_BYTES > 0): concurrent_log_handler's
  ConcurrentRotatingFileHandler, which takes a file lock around each write and rollover and
  reopens a file another process has rotated. Costs a lock per line; for hosts without logrotate.
"""

from __future__ import annotations

import contextvars
import logging
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


def log_file_handler(
    *, path: str, max_bytes: int, backup_count: int, formatter: str
) -> dict[str, Any]:
    """The LOGGING handler entry (dictConfig shape) writing `formatter`'s lines to `path`:
    rotated by an external logrotate when `max_bytes` is 0, else by the app at `max_bytes`
    keeping `backup_count` old files (`path.1` newest). Raises ImproperlyConfigured when the
    file's folder does not exist or is not a folder, so a typo stops start-up instead of
    silently dropping every line."""
    folder = Path(path).expanduser().resolve().parent
    if not folder.is_dir():
        raise ImproperlyConfigured(f"LOG_FILE: the folder {folder} does not exist")
    common = {
        "filename": str(Path(path).expanduser().resolve()),
        "encoding": "utf-8",
        "formatter": formatter,
        "filters": ["request_id"],
    }
    if max_bytes == 0:
        return {"class": "logging.handlers.WatchedFileHandler", **common}
    return {
        "class": "concurrent_log_handler.ConcurrentRotatingFileHandler",
        "maxBytes": max_bytes,
        "backupCount": backup_count,
        **common,
    }


# Tasks beat sends every minute only to prove that beat, broker and a worker are alive.
ROUTINE_TASKS = ("config.tasks.worker_heartbeat_task", "worker-heartbeat")


class RoutineTaskFilter(logging.Filter):
    """Drops INFO and DEBUG lines about the routine liveness tasks: at one or two lines a minute
    they would bury the lines that mean something. Their warnings and errors still pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        message = record.getMessage()
        return not any(name in message for name in ROUTINE_TASKS)
