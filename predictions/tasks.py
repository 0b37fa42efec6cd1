"""Celery tasks of the predictions app: thin wrappers that call a service."""

from __future__ import annotations

from datetime import datetime

from celery import shared_task
from django.db import OperationalError
from django.utils import timezone


@shared_task(
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=30,
    max_retries=3,
)
def drift_check_task(as_of: str | None = None) -> list[int]:
    """Daily drift check. The window ends on the hour (or at `as_of`), so a retry or a
    redelivered message rewrites the same reports instead of adding new ones."""
    from predictions.drift import drift_check

    if as_of:
        window_end = datetime.fromisoformat(as_of)
    else:
        window_end = timezone.now().replace(minute=0, second=0, microsecond=0)
    return [report.pk for report in drift_check(as_of=window_end)]
