"""Celery tasks: thin wrappers over backups.services, idempotent and safe to redeliver."""

from __future__ import annotations

from datetime import datetime

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from backups import services
from backups.jobs import job_run

# Worth another try a little later: a database restarting, a connection dropped.
TRANSIENT_ERRORS = (OperationalError, InterfaceError)
RETRY = {
    "acks_late": True,
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 30,
    "retry_backoff_max": 600,
    "max_retries": 5,
}


def scheduled_slot(request) -> str:
    """The slot of a scheduled run: the hour it was published (a header set by config.celery).

    Two beats, or one message delivered twice, publish within the same hour and so share a
    slot; a message without the header falls back to its task id, stable across redelivery.
    """
    published = getattr(request, "published_at", None)
    if published:
        try:
            return f"scheduled-{datetime.fromisoformat(published):%Y-%m-%dT%H}"
        except ValueError:
            pass
    return f"task-{request.id}"


@shared_task(
    bind=True,
    soft_time_limit=settings.BACKUP_TIME_LIMIT_SECONDS,
    time_limit=settings.BACKUP_TIME_LIMIT_SECONDS + settings.JOB_TIME_LIMIT_GRACE_SECONDS,
    **RETRY,
)
def backup_create_task(self, slot: str | None = None) -> int:
    """Runs one backup for the slot (by default the hour the task was scheduled)."""
    slot = slot or scheduled_slot(self.request)
    with job_run("backup", slot=slot) as run:
        try:
            backup = services.backup_create(slot=slot, actor="job:backup")
        except services.BackupInProgress as exc:
            # Another live process is writing this slot: look again once it should be done.
            raise self.retry(exc=exc, kwargs={"slot": slot}, countdown=120) from None
        except TRANSIENT_ERRORS as exc:
            raise self.retry(exc=exc, kwargs={"slot": slot}) from None
        run["backup_id"] = backup.pk
    return backup.pk


@shared_task(bind=True, **RETRY)
def cleanup_retention_task(self) -> dict:
    """Old backups, logs, job runs, drift reports, expired tokens, unreferenced artifacts;
    safe to run any time."""
    with job_run("cleanup_retention") as run:
        summary = services.retention_cleanup_run()
        run.update(services.retention_cleanup_counts(summary))
    return summary


@shared_task(bind=True, **RETRY)
def stalled_jobs_reap_task(self) -> dict[str, list[int]]:
    """Fails running jobs whose worker stopped beating (every minute on the beat schedule).

    Only the reaper's own failures are recorded as job runs: an idle minute leaves no row.
    """
    reaped = services.stalled_jobs_reap(actor="job:reaper", dry_run=True)
    if not any(reaped.values()):
        return reaped
    with job_run("reap_stalled_jobs") as run:
        reaped = services.stalled_jobs_reap(actor="job:reaper")
        run.update({kind: len(ids) for kind, ids in reaped.items()})
    return reaped
