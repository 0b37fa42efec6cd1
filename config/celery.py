"""The Celery app. Broker from CELERY_BROKER_URL (filesystem transport by default, no server)."""

import os
from datetime import UTC, datetime

from celery import Celery
from celery.signals import before_task_publish, celeryd_init, task_postrun, task_prerun

from config.logging import request_id_var

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("model_registry")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def ensure_filesystem_broker_dirs() -> None:
    """The filesystem transport needs its folders to exist before a worker or client uses it."""
    from django.conf import settings

    for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
        folder = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get(key)
        if folder:
            os.makedirs(folder, exist_ok=True)


@app.on_after_configure.connect
def _broker_dirs_for_clients(sender, **kwargs) -> None:
    ensure_filesystem_broker_dirs()


@celeryd_init.connect
def _broker_dirs_for_workers(sender=None, **kwargs) -> None:
    ensure_filesystem_broker_dirs()


@before_task_publish.connect
def _headers_add(headers=None, **kwargs) -> None:
    """The publisher's request id follows the task into the worker's log lines."""
    if headers is None:
        return
    headers.setdefault("request_id", request_id_var.get())
    # Jobs derive their idempotency slot from it (see backups.tasks.scheduled_slot).
    headers.setdefault("published_at", datetime.now(UTC).isoformat())


@task_prerun.connect
def _request_id_bind(task_id=None, task=None, **kwargs) -> None:
    request_id = getattr(task.request, "request_id", None) if task is not None else None
    request_id_var.set(request_id if request_id and request_id != "-" else f"task-{task_id}")


@task_postrun.connect
def _request_id_unbind(**kwargs) -> None:
    request_id_var.set("-")
