"""The Celery app. Broker from CELERY_BROKER_URL (filesystem transport by default, no server)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("model_registry")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def ensure_filesystem_broker_dirs() -> None:
    """The filesystem transport (and the file result backend) need their folders to exist before
    a worker or client uses them."""
    from django.conf import settings

    for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
        folder = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get(key)
        if folder:
            os.makedirs(folder, exist_ok=True)
    # Celery's file result backend refuses a folder that does not exist yet.
    if settings.CELERY_RESULT_BACKEND.startswith("file://"):
        os.makedirs(settings.CELERY_RESULT_BACKEND.removeprefix("file://"), exist_ok=True)


# --- The request id travels with every task it enqueues, into the task's log lines ---
# A task published while handling a request carries that request's id in a message header; the
# worker puts it in the contextvar the log filter reads. Beat-scheduled tasks, which have no
# request, log under their own task id. One log line per task run says how it ended.
import logging  # noqa: E402
import time  # noqa: E402

from celery.signals import before_task_publish, task_postrun, task_prerun  # noqa: E402

from config.logging import request_id_var  # noqa: E402

_task_log = logging.getLogger("mlregistry.tasks")
_NO_REQUEST = request_id_var.get()  # the contextvar's default


@before_task_publish.connect(weak=False)
def _publish_request_id(headers=None, **kwargs) -> None:
    request_id = request_id_var.get()
    if headers is not None and request_id != _NO_REQUEST:
        headers.setdefault("request_id", request_id)


def _incoming_request_id(task) -> str | None:
    request = task.request
    return getattr(request, "request_id", None) or (request.headers or {}).get("request_id")


@task_prerun.connect(weak=False)
@task_postrun.connect(weak=False)
def _database_connections_kept(task=None, **kwargs) -> None:
    """Database connections live across tasks as Django keeps them across requests: closed
    when unusable or older than CONN_MAX_AGE (django.db.close_old_connections). Celery's
    Django fixup would close them before and after every task (CELERY_DB_REUSE_MAX in settings
    turns that off): a new PostgreSQL connection per task, ~5 ms and a backend process forked,
    paid by every batch chunk. An eager task runs inside its caller's transaction: left alone."""
    if not getattr(task.request, "is_eager", False):
        from django.db import close_old_connections

        close_old_connections()


@task_prerun.connect(weak=False)
def _cache_deletes_pending_sent(**kwargs) -> None:
    """A worker that changed something during a cache outage (a job promoting a model) keeps
    the deletes it could not send; they go before its next task once the cache answers."""
    from config import cache_outage

    if cache_outage._pending:
        cache_outage.deletes_pending_sent()


@task_prerun.connect(weak=False)
def _adopt_request_id(task_id=None, task=None, **kwargs) -> None:
    incoming = _incoming_request_id(task)
    current = request_id_var.get()
    # An eager task runs inside the request and already has its id.
    request_id = incoming or (current if current != _NO_REQUEST else task_id)
    task.request.mlr_context = (request_id_var.set(request_id), time.perf_counter())


@task_postrun.connect(weak=False)
def _restore_request_id(task_id=None, task=None, state=None, **kwargs) -> None:
    context = getattr(task.request, "mlr_context", None)
    if context is None:
        return
    token, started = context
    _task_log.info(
        "task %s %s",
        task.name,
        state,
        extra={
            "task": task.name,
            "task_id": task_id,
            "outcome": state,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        },
    )
    request_id_var.reset(token)
    task.request.mlr_context = None


# --- Backups: broker folders wherever the app starts; publish time for job slots ---
from datetime import UTC, datetime  # noqa: E402

from celery.signals import celeryd_init  # noqa: E402


@app.on_after_configure.connect(weak=False)
def _broker_dirs_for_clients(sender=None, **kwargs) -> None:
    ensure_filesystem_broker_dirs()


@celeryd_init.connect(weak=False)
def _broker_dirs_for_workers(sender=None, **kwargs) -> None:
    ensure_filesystem_broker_dirs()


@before_task_publish.connect(weak=False)
def _publish_time(headers=None, **kwargs) -> None:
    # Scheduled jobs derive their idempotency slot from it (backups.tasks.scheduled_slot).
    if headers is not None:
        headers.setdefault("published_at", datetime.now(UTC).isoformat())


# --- end backups ---


# --- A message is redelivered only when no worker can still be running it ---
# With acks_late, Redis and SQS hand an unacknowledged message to another worker once the
# transport's visibility timeout passes, even if the first worker is still running it. So the
# timeout is derived from the longest hard time limit of any registered task, never set by hand.
# A killed worker's job is noticed by the stalled-job reaper long before (config.job_heartbeats).

# Covers a message waiting in a worker's prefetch buffer for a free process before it starts.
VISIBILITY_TIMEOUT_MARGIN_SECONDS = 300


def longest_task_time_limit(celery_app: Celery) -> int:
    """The largest hard time limit (seconds) of the app's tasks, the default one included."""
    default = celery_app.conf.task_time_limit or 0
    limits = [task.time_limit or default for task in celery_app.tasks.values()]
    return int(max([default, *limits]))


def visibility_timeout(celery_app: Celery) -> int:
    """The broker visibility timeout that outlasts every task's run."""
    return longest_task_time_limit(celery_app) + VISIBILITY_TIMEOUT_MARGIN_SECONDS


@app.on_after_finalize.connect(weak=False)
def _visibility_timeout_from_time_limits(sender=None, **kwargs) -> None:
    celery_app = sender or app
    options = dict(celery_app.conf.broker_transport_options or {})
    options["visibility_timeout"] = visibility_timeout(celery_app)
    celery_app.conf.broker_transport_options = options
