"""Celery tasks of the registry: thin wrappers that take ids and call a service."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings
from django.db import OperationalError

logger = logging.getLogger(__name__)


@shared_task(
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
    from mlregistry.training import training_job_run

    try:
        return training_job_run(job_id=job_id).status
    except NotFoundError:
        logger.warning("training job gone; message dropped", extra={"job": job_id})
        return "missing"


@shared_task(acks_late=True, autoretry_for=(OperationalError,), retry_backoff=30, max_retries=3)
def retraining_scheduled_task() -> list[int]:
    """The retraining schedule: one run of each model's recurring job per day at most."""
    from mlregistry.training import retraining_schedule_run

    return [job.pk for job in retraining_schedule_run()]
