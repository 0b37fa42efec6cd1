"""Celery tasks of the webhooks: thin, idempotent (a delivery is claimed before it is sent and
its status checked first, so a duplicate message sends nothing twice)."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from mlregistry.webhooks import services


def _follow_up(task, delivery_id: int, countdown: float | None = None) -> None:
    # On the queue this message came from, so a worker that serves a dedicated queue keeps the
    # whole conversation with a receiver.
    queue = (task.request.delivery_info or {}).get("routing_key")
    options = {"queue": queue} if queue else {}
    task.apply_async((delivery_id,), countdown=countdown, **options)


@shared_task(
    bind=True,
    acks_late=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=5,
    max_retries=5,
    # A 5 s request and two short transactions; far below the default job limits.
    soft_time_limit=60,
    time_limit=90,
)
def webhook_delivery_send_task(self, delivery_id: int) -> str:
    """Makes the next attempt of one delivery; schedules its retry (backoff with jitter) or
    sends the next delivery of its queue."""
    result = services.webhook_delivery_attempt(delivery_id=delivery_id)
    if result.retry_in is not None:
        _follow_up(self, delivery_id, countdown=result.retry_in)
    if result.next_delivery is not None:
        _follow_up(self, result.next_delivery)
    return result.outcome


@shared_task(acks_late=True, autoretry_for=(OperationalError,), retry_backoff=30, max_retries=3)
def webhook_deliveries_resume_task() -> list[int]:
    """Every minute: sends again the deliveries whose task was lost (see
    services.webhook_deliveries_due)."""
    due = services.webhook_deliveries_due()
    services.deliveries_enqueue(due)
    return due
