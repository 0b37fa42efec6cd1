"""gunicorn hooks: `gunicorn -c config/gunicorn.py config.wsgi:application [options]`.

- Prometheus multiprocess mode: with PROMETHEUS_MULTIPROC_DIR set (an empty folder, emptied at
  every start), /metrics adds up all workers; a dead worker's live gauges are dropped here.
- A worker that exits (restart, scale down, SIGTERM) first flushes its prediction-log buffer.
"""

import os


def worker_exit(server, worker):
    from django.apps import apps

    if apps.ready and apps.is_installed("predictions"):
        from predictions.logbuffer import prediction_log_buffer

        prediction_log_buffer.stop()


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
