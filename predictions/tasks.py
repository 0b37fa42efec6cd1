"""Celery tasks of the predictions app (the drift check lives in quality.tasks): thin wrappers
that call a service."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings
from django.db import OperationalError

# --- Batch scoring (predictions.batch): a chord whose join is the job row ---


@shared_task(acks_late=True, autoretry_for=(OperationalError,), retry_backoff=10, max_retries=5)
def batch_job_start_task(job_id: int) -> int:
    """Plans a batch job and sends each of its pending chunks to the workers."""
    from predictions.batch import batch_job_start

    pending = batch_job_start(job_id=job_id)
    for index in pending:
        batch_chunk_run_task.apply_async((job_id, index), queue=settings.BATCH_QUEUE or None)
    return len(pending)


@shared_task(
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=10,
    max_retries=5,
    soft_time_limit=settings.BATCH_CHUNK_TIME_LIMIT_SECONDS,
    time_limit=settings.BATCH_CHUNK_TIME_LIMIT_SECONDS + settings.JOB_TIME_LIMIT_GRACE_SECONDS,
)
def batch_chunk_run_task(job_id: int, index: int) -> str:
    """Scores one chunk of a batch job (idempotent: a redelivered chunk is counted once)."""
    from predictions.batch import batch_chunk_run

    return batch_chunk_run(job_id=job_id, index=index)


@shared_task(acks_late=True, autoretry_for=(OperationalError,), retry_backoff=10, max_retries=5)
def batch_job_finish_task(job_id: int) -> str:
    """Merges a batch job's parts once every chunk is done."""
    from predictions.batch import batch_job_finish

    return batch_job_finish(job_id=job_id).status
