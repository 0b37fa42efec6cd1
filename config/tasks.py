"""Tasks that belong to the deployment rather than to an app."""

from celery import shared_task

from config.metrics import worker_heartbeat_record


@shared_task(name="config.tasks.worker_heartbeat_task", ignore_result=True)
def worker_heartbeat_task() -> float:
    """Proves beat, broker and a worker work end to end (alert: WorkerDown)."""
    return worker_heartbeat_record()
