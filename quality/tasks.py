"""Celery tasks of the quality loop: thin wrappers that take ids and call a service.

Each task keeps the name it had before the quality app existed (`name=`): django-celery-beat
rows and messages already queued refer to tasks by name.
"""

from __future__ import annotations

import logging
from datetime import datetime

from celery import shared_task
from django.conf import settings
from django.db import OperationalError
from django.utils import timezone

logger = logging.getLogger(__name__)


@shared_task(
    name="mlregistry.tasks.training_job_run_task",
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=30,
    max_retries=3,
    soft_time_limit=settings.TRAINING_TIME_LIMIT_SECONDS,
    time_limit=settings.TRAINING_TIME_LIMIT_SECONDS + settings.JOB_TIME_LIMIT_GRACE_SECONDS,
)
def training_job_run_task(job_id: int) -> str:
    """Runs one training job; a retry or redelivery resumes it without a second candidate."""
    from config.errors import NotFoundError
    from quality.training import training_job_run

    try:
        return training_job_run(job_id=job_id).status
    except NotFoundError:
        logger.warning("training job gone; message dropped", extra={"job": job_id})
        return "missing"


@shared_task(
    name="mlregistry.tasks.retraining_scheduled_task",
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=30,
    max_retries=3,
)
def retraining_scheduled_task() -> list[int]:
    """The retraining schedule: one run of each model's recurring job per day at most."""
    from quality.training import retraining_schedule_run

    return [job.pk for job in retraining_schedule_run()]


@shared_task(
    name="predictions.tasks.drift_check_task",
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=30,
    max_retries=3,
)
def drift_check_task(as_of: str | None = None) -> list[int]:
    """Daily drift check. The window ends on the hour (or at `as_of`), so a retry or a
    redelivered message rewrites the same reports instead of adding new ones."""
    from quality.drift import drift_check

    if as_of:
        window_end = datetime.fromisoformat(as_of)
    else:
        window_end = timezone.now().replace(minute=0, second=0, microsecond=0)
    return [report.pk for report in drift_check(as_of=window_end)]
