"""Every change to webhooks, and the sending of their deliveries. The admin, the API and the
Celery tasks call these; each change is audited in its own transaction (mlregistry.audit).

The secret never enters an audit diff, a log line or an error message.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import certifi
import httpx
from django.conf import settings
from django.db import transaction
from django.db.models import Min, Q
from django.utils import timezone

from config.errors import NotFoundError, ValidationFailed
from config.events import EVENT_TYPES, RegistryEvent
from config.pruning import delete_in_batches
from mlregistry.audit import (
    Actor,
    audit_record,
    changes_diff,
    created_changes,
    deleted_changes,
    fields_snapshot,
    prune_auditor,
)
from mlregistry.models import RegisteredModel
from mlregistry.webhooks.models import (
    PING_EVENT,
    DeliveryStatus,
    Webhook,
    WebhookAttempt,
    WebhookDelivery,
)
from mlregistry.webhooks.signing import secret_generate, signature_header
from mlregistry.webhooks.targets import (
    TargetRefused,
    target_check,
    target_host_header,
    target_url,
)

logger = logging.getLogger(__name__)

# What an audit row shows of a webhook: everything but the secret.
_AUDITED_FIELDS = ("name", "url", "events", "model", "active", "disabled_reason")
# The answer's first bytes kept with each attempt.
RESPONSE_EXCERPT_BYTES = 1024
USER_AGENT = "model-registry-webhooks/1"
# The job that disables a failing webhook, as the audit trail names it.
DELIVERY_ACTOR = "job:webhooks"


def _events_check(events: Any) -> list[str]:
    if not isinstance(events, list) or not events:
        raise ValidationFailed(
            "A webhook needs at least one event type.",
            fields={"events": [f"a non-empty list of: {', '.join(EVENT_TYPES)}"]},
        )
    unknown = [e for e in events if e not in EVENT_TYPES]
    if unknown:
        raise ValidationFailed(
            f"Unknown event type(s): {', '.join(map(str, unknown))}.",
            fields={"events": [f"each must be one of: {', '.join(EVENT_TYPES)}"]},
        )
    return list(dict.fromkeys(events))


def _name_check(name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise ValidationFailed("A webhook needs a name.", fields={"name": ["1 to 100 characters"]})
    return name.strip()


def _url_check(url: Any) -> str:
    if not isinstance(url, str) or not url or len(url) > 2000:
        raise ValidationFailed("A webhook needs a URL.", fields={"url": ["1 to 2000 characters"]})
    target_check(url)
    return url


def _webhook_lock(webhook: Webhook) -> Webhook:
    locked = Webhook.objects.select_for_update().filter(pk=webhook.pk).first()
    if locked is None:
        raise NotFoundError("This webhook was deleted meanwhile; nothing was changed.")
    return locked


def webhook_create(
    *,
    name: str,
    url: str,
    events: list[str],
    actor: Actor,
    model: RegisteredModel | None = None,
    active: bool = True,
) -> Webhook:
    """Creates a webhook with a new secret (`webhook.secret`: show it to its creator now, it is
    never shown again). ValidationFailed (400, naming the field) for an empty name, an unknown
    event type, or a URL target_check refuses (not http(s), or resolving to a loopback, private
    or link-local address not in WEBHOOK_ALLOWED_HOSTS)."""
    name = _name_check(name)
    events = _events_check(events)
    url = _url_check(url)
    with transaction.atomic():
        webhook = Webhook.objects.create(
            name=name,
            url=url,
            events=events,
            model=model,
            active=active,
            secret=secret_generate(),
            created_by=None if isinstance(actor, str) else actor,
        )
        audit_record(
            actor=actor,
            verb="create",
            obj=webhook,
            changes=created_changes(webhook, _AUDITED_FIELDS),
        )
    logger.info("webhook created", extra={"webhook": webhook.pk, "events": events})
    return webhook


class _Unset:
    """Marks an argument the caller did not give (None means "every model" for `model`)."""


UNSET: Any = _Unset()


def webhook_update(
    *,
    webhook: Webhook,
    actor: Actor,
    name: str | None = None,
    url: str | None = None,
    events: list[str] | None = None,
    model: RegisteredModel | _Unset | None = UNSET,
    active: bool | None = None,
) -> Webhook:
    """Changes what is given (the secret never changes here); a call that changes nothing
    writes nothing. Turning a webhook back on clears why it was disabled and its failure clock.
    ValidationFailed as at creation; NotFoundError (404) when it was deleted meanwhile."""
    wanted: dict[str, Any] = {}
    if name is not None:
        wanted["name"] = _name_check(name)
    if url is not None:
        wanted["url"] = _url_check(url)
    if events is not None:
        wanted["events"] = _events_check(events)
    if not isinstance(model, _Unset):
        wanted["model"] = model
    if active is not None:
        wanted["active"] = active
        if active:
            wanted["disabled_reason"] = ""
    with transaction.atomic():
        locked = _webhook_lock(webhook)
        before = fields_snapshot(locked, _AUDITED_FIELDS)
        for field, value in wanted.items():
            setattr(locked, field, value)
        changes = changes_diff(before, fields_snapshot(locked, _AUDITED_FIELDS))
        if changes:
            update_fields = [*changes, "updated_at"]
            if changes.get("active") == [False, True]:
                locked.failing_since = None
                update_fields.append("failing_since")
            locked.save(update_fields=update_fields)
            audit_record(actor=actor, verb="update", obj=locked, changes=changes)
    return locked


def webhook_delete(*, webhook: Webhook, actor: Actor) -> None:
    """Deletes a webhook with its deliveries; NotFoundError (404) when already gone."""
    with transaction.atomic():
        locked = _webhook_lock(webhook)
        audit_record(
            actor=actor,
            verb="delete",
            obj=locked,
            changes=deleted_changes(locked, _AUDITED_FIELDS),
        )
        locked.delete()


def webhooks_of_model_delete(*, model: RegisteredModel, actor: Actor) -> int:
    """Inside the transaction that deletes `model`: deletes the webhooks filtered on it (each
    audited as a delete by the same actor) rather than letting the cascade remove them
    silently. Returns how many went."""
    hooks = list(Webhook.objects.select_for_update().filter(model=model))
    for hook in hooks:
        audit_record(
            actor=actor, verb="delete", obj=hook, changes=deleted_changes(hook, _AUDITED_FIELDS)
        )
        hook.delete()
    return len(hooks)


def webhook_disable(*, webhook: Webhook, actor: Actor, reason: str) -> Webhook:
    """Turns a webhook off, saying why (shown in the admin, the API, the dashboard and
    readiness). Its pending deliveries fail at their next attempt instead of being sent."""
    with transaction.atomic():
        locked = _webhook_lock(webhook)
        if not locked.active:
            return locked
        before = fields_snapshot(locked, _AUDITED_FIELDS)
        locked.active = False
        locked.disabled_reason = reason[:300]
        locked.save(update_fields=["active", "disabled_reason", "updated_at"])
        audit_record(
            actor=actor,
            verb="disable",
            obj=locked,
            changes=changes_diff(before, fields_snapshot(locked, _AUDITED_FIELDS)),
        )
    logger.warning("webhook disabled", extra={"webhook": locked.pk, "reason": reason})
    return locked


# --- Deliveries: written with the change, sent after it commits ---------------------------


def _body(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), sort_keys=False)


def deliveries_enqueue(delivery_ids: list[int], *, countdown: float | None = None) -> None:
    """Sends a task for each delivery. A broker that cannot take it loses nothing: the
    delivery stays pending and webhook_deliveries_due() finds it for the resume job."""
    from config.celery import ensure_filesystem_broker_dirs
    from mlregistry.webhooks.tasks import webhook_delivery_send_task

    for delivery_id in delivery_ids:
        try:
            ensure_filesystem_broker_dirs()
            webhook_delivery_send_task.apply_async((delivery_id,), countdown=countdown)
        except Exception:
            logger.exception("could not enqueue webhook delivery", extra={"delivery": delivery_id})


def deliveries_create_for_event(sender: Any, event: RegistryEvent, **kwargs: Any) -> list[int]:
    """The receiver of config.events.event_published: one delivery per active webhook that
    subscribes to the event (and to its model, when it names one), written in the publisher's
    transaction and enqueued once it commits. Returns the deliveries' ids."""
    hooks = [
        hook
        for hook in Webhook.objects.filter(active=True).select_related("model")
        if hook.subscribes_to(event.event, event.model)
    ]
    if not hooks:
        return []
    body = _body(event.payload())
    now = timezone.now()
    # One INSERT for all of them; both backends return the new ids.
    created = WebhookDelivery.objects.bulk_create(
        WebhookDelivery(
            webhook=hook,
            delivery_id=uuid.uuid4(),
            event_id=event.id,
            event=event.event,
            model_name=event.model,
            ordering_key=event.model,
            body=body,
            next_attempt_at=now,
        )
        for hook in hooks
    )
    ids = [delivery.pk for delivery in created]
    transaction.on_commit(partial(deliveries_enqueue, ids))
    return ids


def webhook_ping(*, webhook: Webhook, actor: Actor) -> WebhookDelivery:
    """Sends a "ping" event to this webhook only (whatever its events, even when inactive), to
    test the receiver; audited. Not queued behind the webhook's pending deliveries."""
    with transaction.atomic():
        locked = _webhook_lock(webhook)
        delivery_id = uuid.uuid4()
        payload = {
            "id": str(uuid.uuid4()),
            "event": PING_EVENT,
            "created_at": timezone.now().isoformat().replace("+00:00", "Z"),
            "data": {"webhook": {"id": locked.pk, "name": locked.name, "events": locked.events}},
        }
        delivery = WebhookDelivery.objects.create(
            webhook=locked,
            delivery_id=delivery_id,
            event_id=payload["id"],
            event=PING_EVENT,
            ordering_key=f"ping:{delivery_id}",
            body=_body(payload),
            next_attempt_at=timezone.now(),
        )
        audit_record(
            actor=actor,
            verb="ping",
            obj=locked,
            changes={"delivery": [None, str(delivery.delivery_id)]},
        )
        transaction.on_commit(partial(deliveries_enqueue, [delivery.pk]))
    return delivery


def webhook_delivery_redeliver(*, delivery: WebhookDelivery, actor: Actor) -> WebhookDelivery:
    """Sends a delivery's event again as a new delivery (same body and event id, a new
    delivery id), at once rather than behind the webhook's queue; audited."""
    with transaction.atomic():
        locked = _webhook_lock(delivery.webhook)
        source = WebhookDelivery.objects.filter(pk=delivery.pk).first()
        if source is None:
            raise NotFoundError("This delivery was deleted meanwhile; nothing was sent.")
        delivery_id = uuid.uuid4()
        copy = WebhookDelivery.objects.create(
            webhook=locked,
            delivery_id=delivery_id,
            event_id=source.event_id,
            event=source.event,
            model_name=source.model_name,
            ordering_key=f"redelivery:{delivery_id}",
            body=source.body,
            next_attempt_at=timezone.now(),
            redelivery_of=source,
        )
        audit_record(
            actor=actor,
            verb="redeliver",
            obj=locked,
            changes={"delivery": [str(source.delivery_id), str(copy.delivery_id)]},
        )
        transaction.on_commit(partial(deliveries_enqueue, [copy.pk]))
    return copy


# --- Sending -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttemptResult:
    """What the sender should do next: try this delivery again in `retry_in` seconds, and/or
    send `next_delivery` (the following one in its queue) now."""

    outcome: str  # "succeeded" | "failed" | "retry" | "waiting" | "gone"
    retry_in: float | None = None
    next_delivery: int | None = None


@dataclass(frozen=True)
class _Answer:
    status_code: int | None
    excerpt: str
    error: str
    duration_ms: float
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def retryable(self) -> bool:
        # Network errors, the receiver's own faults and "slow down": later may work. Anything
        # else (4xx, an unfollowed redirect, a refused target) will answer the same again.
        if self.status_code is None:
            return self.error.startswith("network:")
        return self.status_code >= 500 or self.status_code == 429


def retry_delay(attempt: int) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): WEBHOOK_RETRY_BASE_SECONDS
    doubled each time, capped at WEBHOOK_RETRY_MAX_SECONDS, with random jitter (half to all of
    it) so a receiver coming back is not hit by every sender at once."""
    delay = min(
        settings.WEBHOOK_RETRY_MAX_SECONDS,
        settings.WEBHOOK_RETRY_BASE_SECONDS * 2 ** (attempt - 1),
    )
    return delay / 2 + random.uniform(0, delay / 2)  # noqa: S311 - jitter, not a secret


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # Built once per process: loading the CA bundle costs ~80 ms, ten times a loopback request.
    return ssl.create_default_context(cafile=certifi.where())


class _Deadline:
    """Ends a request still running `seconds` after it started. httpx's timeout bounds each
    read, not the whole exchange, so a receiver that sends a header line every few seconds
    held a worker for as long as it liked. The connection's socket (seen through httpcore's
    `trace` extension) is shut down at the deadline, which wakes a blocked read with an error
    the caller records as a failed attempt."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.passed = False
        self._socket: socket.socket | None = None
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def trace(self, event: str, info: dict[str, Any]) -> None:
        # The TCP socket, then (https) the TLS one wrapping it: wrapping detaches the first,
        # whose shutdown would then do nothing.
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            stream = info.get("return_value")
            if stream is not None:
                self._socket = stream.get_extra_info("socket")
            if self.passed:
                self._expire()

    def _expire(self) -> None:
        self.passed = True
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def _post(delivery: WebhookDelivery, url: str) -> _Answer:
    body = delivery.body.encode()
    started = time.perf_counter()
    try:
        target = target_check(url)
    except TargetRefused as exc:
        return _Answer(None, "", f"refused: {exc.fields['url'][0]}", 0.0)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Host": target_host_header(target),
        "X-Registry-Event": delivery.event,
        "X-Registry-Delivery": str(delivery.delivery_id),
        "X-Registry-Signature": signature_header(secret=delivery.webhook.secret, body=body),
    }
    deadline = _Deadline(settings.WEBHOOK_TIMEOUT_SECONDS)
    extensions: dict[str, Any] = {"trace": deadline.trace}
    if target.scheme == "https":
        extensions["sni_hostname"] = target.host
    try:
        # trust_env=False: no proxy from the environment, which would connect to a host of its
        # choosing rather than the address checked above. Redirects are never followed.
        with (
            deadline,
            httpx.Client(
                timeout=settings.WEBHOOK_TIMEOUT_SECONDS,
                follow_redirects=False,
                trust_env=False,
                verify=_tls_context(),
            ) as client,
            client.stream(
                "POST", target_url(target), content=body, headers=headers, extensions=extensions
            ) as response,
        ):
            received = b""
            for chunk in response.iter_raw():
                received += chunk
                if len(received) >= RESPONSE_EXCERPT_BYTES:
                    break
            if deadline.passed:
                # Whatever arrived, it did not arrive in time (a shutdown may not raise).
                raise httpx.ReadTimeout("deadline passed")
            return _Answer(
                response.status_code,
                received[:RESPONSE_EXCERPT_BYTES].decode("utf-8", errors="replace"),
                "",
                (time.perf_counter() - started) * 1000,
                _retry_after(response.headers.get("Retry-After")),
            )
    except httpx.HTTPError as exc:
        why = f"network: {type(exc).__name__}: {exc}"
        if deadline.passed:
            why = f"timeout: no whole answer within {settings.WEBHOOK_TIMEOUT_SECONDS} s"
        return _Answer(None, "", why[:500], (time.perf_counter() - started) * 1000)


def _queue_next(delivery: WebhookDelivery) -> int | None:
    return (
        WebhookDelivery.objects.filter(
            webhook_id=delivery.webhook_id,
            ordering_key=delivery.ordering_key,
            status=DeliveryStatus.PENDING,
            id__gt=delivery.pk,
        )
        .order_by("id")
        .values_list("id", flat=True)
        .first()
    )


def _claim(delivery_id: int, now: datetime) -> bool:
    lease = now + timedelta(seconds=2 * settings.WEBHOOK_TIMEOUT_SECONDS + 30)
    return bool(
        WebhookDelivery.objects.filter(pk=delivery_id, status=DeliveryStatus.PENDING)
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
        .update(claimed_until=lease)
    )


def _record(delivery_id: int, answer: _Answer, started_at: datetime) -> AttemptResult:
    webhook_id = (
        WebhookDelivery.objects.filter(pk=delivery_id).values_list("webhook_id", flat=True).first()
    )
    with transaction.atomic():
        # The webhook, then the delivery: the order webhook_delete's cascade locks them in.
        webhook = Webhook.objects.select_for_update().filter(pk=webhook_id).first()
        delivery = (
            WebhookDelivery.objects.select_for_update()
            .select_related("webhook")
            .filter(pk=delivery_id)
            .first()
        )
        if webhook is None or delivery is None:
            return AttemptResult("gone")
        delivery.attempt_count += 1
        WebhookAttempt.objects.create(
            delivery=delivery,
            number=delivery.attempt_count,
            started_at=started_at,
            status_code=answer.status_code,
            duration_ms=round(answer.duration_ms, 2),
            response_excerpt=answer.excerpt,
            error=answer.error,
        )
        now = timezone.now()
        retry_in = None
        if answer.ok:
            delivery.status = DeliveryStatus.SUCCEEDED
            if webhook.failing_since is not None:
                webhook.failing_since = None
                webhook.save(update_fields=["failing_since"])
        else:
            if webhook.failing_since is None and webhook.active:
                webhook.failing_since = now
                webhook.save(update_fields=["failing_since"])
            give_up_after = timedelta(hours=settings.WEBHOOK_DISABLE_AFTER_HOURS)
            if webhook.active and now - webhook.failing_since >= give_up_after:
                webhook_disable(
                    webhook=webhook,
                    actor=DELIVERY_ACTOR,
                    reason=(
                        f"Every delivery failed for {settings.WEBHOOK_DISABLE_AFTER_HOURS:g} h "
                        f"(since {webhook.failing_since:%Y-%m-%d %H:%M} UTC); last: "
                        f"{answer.status_code or answer.error}"
                    ),
                )
                webhook.active = False
            if (
                answer.retryable
                and webhook.active
                and delivery.attempt_count < settings.WEBHOOK_MAX_ATTEMPTS
            ):
                retry_in = retry_delay(delivery.attempt_count)
                if answer.retry_after is not None:
                    retry_in = max(
                        retry_in, min(answer.retry_after, settings.WEBHOOK_RETRY_MAX_SECONDS)
                    )
                delivery.next_attempt_at = now + timedelta(seconds=retry_in)
            else:
                delivery.status = DeliveryStatus.FAILED
        if delivery.status != DeliveryStatus.PENDING:
            delivery.finished_at = now
        delivery.claimed_until = None
        delivery.save(
            update_fields=[
                "attempt_count",
                "status",
                "next_attempt_at",
                "finished_at",
                "claimed_until",
            ]
        )
    logger.info(
        "webhook delivery attempted",
        extra={
            "webhook": delivery.webhook_id,
            "delivery": str(delivery.delivery_id),
            "event": delivery.event,
            "attempt": delivery.attempt_count,
            "status_code": answer.status_code,
            "error": answer.error,
            "outcome": delivery.status,
        },
    )
    if delivery.status == DeliveryStatus.PENDING:
        return AttemptResult("retry", retry_in=retry_in)
    return AttemptResult(delivery.status, next_delivery=_queue_next(delivery))


def webhook_delivery_attempt(*, delivery_id: int) -> AttemptResult:
    """Makes the next attempt of a delivery, if it is its turn: it is pending, due, not held
    by another sender, and no earlier delivery of its webhook and model is pending (events of
    one model arrive in the order they happened). Records the attempt; after
    WEBHOOK_DISABLE_AFTER_HOURS of failures, disables the webhook. Safe to call twice."""
    now = timezone.now()
    delivery = WebhookDelivery.objects.select_related("webhook").filter(pk=delivery_id).first()
    if delivery is None:
        return AttemptResult("gone")
    if delivery.status != DeliveryStatus.PENDING:
        return AttemptResult(delivery.status)
    earlier = WebhookDelivery.objects.filter(
        webhook_id=delivery.webhook_id,
        ordering_key=delivery.ordering_key,
        status=DeliveryStatus.PENDING,
        id__lt=delivery.pk,
    ).exists()
    if earlier:
        # The earlier delivery's sender sends this one when it is done.
        return AttemptResult("waiting")
    if delivery.next_attempt_at > now:
        return AttemptResult("retry", retry_in=(delivery.next_attempt_at - now).total_seconds())
    if not _claim(delivery.pk, now):
        return AttemptResult("waiting")
    webhook = delivery.webhook
    if not webhook.active and delivery.event != PING_EVENT:
        answer = _Answer(None, "", "not sent: the webhook is disabled", 0.0)
    else:
        answer = _post(delivery, webhook.url)
    return _record(delivery.pk, answer, now)


def webhook_deliveries_due(*, now: datetime | None = None, grace_seconds: int = 60) -> list[int]:
    """The first pending delivery of each queue (webhook + model) that should have been tried
    more than `grace_seconds` ago and is held by no sender: its task was lost (a broker that
    refused it, a worker that died). The resume job sends these again."""
    now = now or timezone.now()
    heads = (
        WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING)
        .values("webhook_id", "ordering_key")
        .annotate(head=Min("id"))
        .values_list("head", flat=True)
    )
    return list(
        WebhookDelivery.objects.filter(
            pk__in=list(heads), next_attempt_at__lt=now - timedelta(seconds=grace_seconds)
        )
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
        .order_by("id")
        .values_list("id", flat=True)
    )


def webhook_deliveries_prune(
    *,
    older_than: datetime,
    dry_run: bool = False,
    batch_size: int = 1000,
    actor: Actor = "job:retention",
) -> int:
    """Deletes finished deliveries (and their attempts) created before `older_than`, in
    batches; pending ones stay whatever their age. Returns how many went (with `dry_run`, how
    many would, deleting nothing), each batch audited as `actor`. Registered with the retention
    job (WEBHOOK_DELIVERY_RETENTION_DAYS) by mlregistry.retention."""
    old = WebhookDelivery.objects.filter(created_at__lt=older_than).exclude(
        status=DeliveryStatus.PENDING
    )
    if dry_run:
        return old.count()
    return delete_in_batches(old, batch_size=batch_size, audit=prune_auditor(actor))
