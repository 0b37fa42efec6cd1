"""Gunicorn settings for the container image; every value can be changed from the environment."""

import os

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
# WEB_CONCURRENCY is gunicorn's own convention for the number of worker processes.
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "1"))
# A request still running after WEB_TIMEOUT seconds gets its worker killed and replaced: one
# stuck prediction must not hold a process forever.
timeout = int(os.environ.get("WEB_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("WEB_GRACEFUL_TIMEOUT", "30"))
keepalive = 5
# Slow clients: the app checks the bearer token before reading a body, and sets
# REQUEST_BODY_TIMEOUT (default 10 s) on the client socket while a body is read
# (config/limits.py), so a body that stops arriving is a 408 long before `timeout` kills the
# worker.
# Recycling workers now and then bounds slow memory growth (e.g. fragmentation from model loads).
max_requests = int(os.environ.get("WEB_MAX_REQUESTS", "5000"))
max_requests_jitter = max_requests // 10
# Heartbeat files on tmpfs: a container's overlay disk can stall and get healthy workers killed.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108
# The app writes one JSON line per request (config/request_log.py); gunicorn's would duplicate it.
accesslog = None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()


def child_exit(server, worker):
    # Live-only gauges in Prometheus' multiprocess mode must forget a dead worker's values.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


# --- Predictions: a worker that exits flushes its prediction-log buffer first.
def worker_exit(server, worker):
    from django.apps import apps

    if apps.ready and apps.is_installed("predictions"):
        from predictions.logbuffer import prediction_log_buffer

        prediction_log_buffer.stop()
