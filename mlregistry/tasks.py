"""Celery tasks of the registry: thin wrappers that take ids and call a service."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError


@shared_task(acks_late=True, autoretry_for=(OperationalError,), retry_backoff=30, max_retries=3)
def training_job_run_task(job_id: int) -> str:
    """Runs one training job; a retry or redelivery resumes it without a second candidate."""
    from mlregistry.training import training_job_run

    return training_job_run(job_id=job_id).status


@shared_task(acks_late=True, autoretry_for=(OperationalError,), retry_backoff=30, max_retries=3)
def retraining_scheduled_task() -> list[int]:
    """The retraining schedule: one run of each model's recurring job per day at most."""
    from mlregistry.training import retraining_schedule_run

    return [job.pk for job in retraining_schedule_run()]
