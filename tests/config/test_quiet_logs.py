"""The terminal of `make run` shows what means something: routine liveness tasks stay quiet."""

import logging

from django.conf import settings

from config.logging import RoutineTaskFilter


def _record(level: int, message: str, *args) -> logging.LogRecord:
    return logging.LogRecord("celery.beat", level, __file__, 1, message, args, None)


def test_heartbeat_lines_are_dropped_below_warning_and_kept_above():
    quiet = RoutineTaskFilter()
    sent = "Scheduler: Sending due task %s (%s)"
    assert not quiet.filter(
        _record(logging.INFO, sent, "worker-heartbeat", "config.tasks.worker_heartbeat_task")
    )
    assert not quiet.filter(
        _record(logging.INFO, "task %s %s", "config.tasks.worker_heartbeat_task", "SUCCESS")
    )
    assert quiet.filter(
        _record(logging.ERROR, "task %s %s", "config.tasks.worker_heartbeat_task", "FAILURE")
    )
    assert quiet.filter(_record(logging.INFO, sent, "backup-daily", "backups.tasks.backup"))


def test_celery_says_each_task_run_once_and_the_broker_url_names_a_host():
    loggers = settings.LOGGING["loggers"]
    assert loggers["celery.app.trace"]["level"] == "WARNING"
    assert loggers["celery.worker.strategy"]["level"] == "WARNING"
    assert "routine_tasks" in loggers["celery.beat"]["filters"]
    assert "routine_tasks" in loggers["mlregistry.tasks"]["filters"]
    if settings.CELERY_BROKER_URL.startswith("filesystem"):
        from kombu import Connection

        assert Connection(settings.CELERY_BROKER_URL).hostname  # no "No hostname" warning
