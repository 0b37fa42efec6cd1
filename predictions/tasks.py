"""Celery tasks of the predictions app (the drift check lives in quality.tasks): thin wrappers
that call a service."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings
from django.db import OperationalError

# --- Batch scoring (predictions.batch): a Celery chord per run of a job ---
# The header is one task per pending chunk, spread over the workers; the body checks the
# input and merges the parts once every member has reported. Members store their
# (small) result: the join reads them (CELERY_RESULT_BACKEND). Every task is idempotent, so a
# redelivered member, or a member of an earlier run of a resumed job, changes nothing twice.


def _batch_queue() -> dict[str, str]:
    return {"queue": settings.BATCH_QUEUE} if settings.BATCH_QUEUE else {}


@shared_task(acks_late=True, autoretry_for=(OperationalError,), retry_backoff=10, max_retries=5)
def batch_job_start_task(job_id: int) -> int:
    """Plans a batch job, then sends its run as a chord: each pending chunk to the workers,
    the finish once they are all done (alone when none is pending). Returns how many chunks
    it sent."""
    from celery import chord

    from predictions.batch import batch_job_start, batch_job_unjoinable, batch_job_unsent

    pending = batch_job_start(job_id=job_id)
    if pending is None:
        return 0
    queue = _batch_queue()
    finish = batch_job_finish_task.si(job_id).set(**queue)
    if not pending:
        finish.apply_async()
        return 0
    header = [batch_chunk_run_task.si(job_id, index).set(**queue) for index in pending]
    try:
        chord(header)(finish)
    except NotImplementedError as exc:
        # Celery's answer for a result backend that cannot join (none, or rpc://): the job
        # fails saying so instead of scoring chunks whose finish would never start.
        batch_job_unjoinable(job_id=job_id, reason=str(exc).splitlines()[0])
        return 0
    except Exception as exc:
        # The result backend or the broker is unreachable: failed now, resumable, rather than
        # left running with chunks no worker was sent (the chunks of other jobs would keep its
        # heartbeat fresh as long as they run).
        batch_job_unsent(job_id=job_id, reason=f"{type(exc).__name__}: {exc}")
        return 0
    return len(pending)


@shared_task(
    acks_late=True,
    ignore_result=False,
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
    """The chord's body: checks the input and merges a batch job's parts once every chunk is
    done."""
    from predictions.batch import batch_job_finish

    return batch_job_finish(job_id=job_id).status
