"""Request ids for log lines: one contextvar, set by the middleware and by Celery tasks."""

import contextvars
import logging

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


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
