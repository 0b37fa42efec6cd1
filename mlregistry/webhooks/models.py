from django.conf import settings
from django.db import models

from config.events import EVENT_TYPES

# Not an event anyone subscribes to: what the admin's and the API's "ping" sends.
PING_EVENT = "ping"


class Webhook(models.Model):
    """A URL subscribed to some event types, optionally for one model only.

    `secret` signs every delivery (signing.py). It is shown once, when the webhook is created,
    and never rendered, audited or logged again; it is kept in clear because the signature is
    computed from it."""

    name = models.CharField(max_length=100)
    url = models.URLField(max_length=2000)
    events = models.JSONField(default=list, help_text=f"any of: {', '.join(EVENT_TYPES)}")
    # Null = every model (and the events that concern none, such as backup.failed).
    model = models.ForeignKey(
        "mlregistry.RegisteredModel",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="webhooks",
    )
    secret = models.CharField(max_length=100, editable=False)
    active = models.BooleanField(default=True)
    # Why the registry turned it off (it kept failing), or "" when a person did or nobody did.
    disabled_reason = models.CharField(max_length=300, blank=True)
    # Set by the first failed attempt after a success; cleared by the next success. A webhook
    # failing for WEBHOOK_DISABLE_AFTER_HOURS is turned off.
    failing_since = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name

    def subscribes_to(self, event: str, model_name: str) -> bool:
        if event not in self.events:
            return False
        return self.model_id is None or (self.model is not None and self.model.name == model_name)


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class WebhookDelivery(models.Model):
    """One event for one webhook. `delivery_id` (X-Registry-Delivery) stays the same across
    its attempts; `body` is the exact bytes sent each time (only the signature's time changes).

    Deliveries of one webhook with the same `ordering_key` (the model's name) are sent one
    after another in id order: a later one waits while an earlier one is pending."""

    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    delivery_id = models.UUIDField(unique=True)
    event_id = models.UUIDField(db_index=True)
    event = models.CharField(max_length=50)
    model_name = models.CharField(max_length=200, blank=True)
    ordering_key = models.CharField(max_length=250, blank=True)
    body = models.TextField()
    status = models.CharField(
        max_length=20, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempt_count = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    # A sender holds the delivery until then; another (a redelivered message) leaves it alone.
    claimed_until = models.DateTimeField(null=True, blank=True)
    redelivery_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="redeliveries"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "webhook deliveries"
        indexes = [
            models.Index(
                fields=["webhook", "ordering_key", "id"],
                condition=models.Q(status="pending"),
                name="webhook_delivery_queue_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event} → {self.webhook} ({self.status})"


class WebhookAttempt(models.Model):
    """One HTTP attempt of a delivery: when, the answer's status (null when none came), how
    long it took and the first KB of the answer, or why no request was made."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    duration_ms = models.FloatField()
    response_excerpt = models.TextField(blank=True)
    error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["delivery_id", "number"]
        constraints = [
            models.UniqueConstraint(
                fields=["delivery", "number"], name="one_attempt_number_per_delivery"
            )
        ]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}: {self.status_code or self.error}"
