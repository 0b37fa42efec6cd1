from django.conf import settings
from django.db import models

from mlregistry.models import ModelVersion, RegisteredModel


class PredictionLog(models.Model):
    """What was served: one row per predicted row (a batch shares its request_id).

    Holds client data: pruned by PREDICTION_LOG_RETENTION_DAYS, and `features` is left empty
    when PREDICTION_LOG_STORE_FEATURES is false.
    """

    # No index of its own: the unique (request_id, served_to, row_index) index serves lookups by
    # request id, and every index is paid on each of the log's many inserts.
    request_id = models.CharField(max_length=128)
    row_index = models.PositiveIntegerField(default=0)
    # The log's foreign keys are not database constraints: each constraint was a lookup (and a
    # row lock on the parent) for every logged row, ~12 us of Postgres per row, and the log is
    # written more than anything else. Django still applies on_delete (it deletes or nulls the
    # rows itself), and rows are only ever written for versions that were just served.
    model = models.ForeignKey(
        RegisteredModel, on_delete=models.CASCADE, related_name="+", db_constraint=False
    )
    # No index of its own: the (version, created_at) index below serves lookups by version.
    version = models.ForeignKey(
        ModelVersion,
        on_delete=models.CASCADE,
        related_name="predictions",
        db_constraint=False,
        db_index=False,
    )
    features = models.JSONField(null=True, blank=True)
    output = models.JSONField(null=True)
    confidence = models.FloatField(null=True, blank=True)
    latency_ms = models.FloatField(default=0)
    cached = models.BooleanField(default=False)
    client_id = models.CharField(max_length=200, blank=True)
    # The authenticated caller the prediction was served to: only it (or a user allowed to
    # change the log) may attach feedback. NULL on rows logged before this was recorded.
    served_to = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=True,
        db_constraint=False,
    )
    actual = models.JSONField(null=True, blank=True)
    feedback_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["version", "created_at"], name="predlog_version_time")]
        constraints = [
            # A request id is the caller's (X-Request-ID): unique per served client, so a client
            # reusing another's id neither loses its own rows nor attaches them to the other's.
            models.UniqueConstraint(
                fields=["request_id", "served_to", "row_index"], name="unique_request_client_row"
            )
        ]

    def __str__(self) -> str:
        return f"{self.request_id}[{self.row_index}] {self.model_id}"


class TrafficSplit(models.Model):
    """A/B routing: while a model has rows here, its traffic goes by these weights."""

    model = models.ForeignKey(
        RegisteredModel, on_delete=models.CASCADE, related_name="traffic_splits"
    )
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="+")
    weight = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["model", "version__version"]
        constraints = [
            models.UniqueConstraint(fields=["model", "version"], name="unique_split_version")
        ]

    def __str__(self) -> str:
        return f"{self.model_id}: v{self.version_id} {self.weight}%"


class ModelTraffic(RegisteredModel):
    """A registered model seen from the serving side (its traffic split)."""

    class Meta:
        proxy = True
        verbose_name = "traffic split"
        verbose_name_plural = "traffic splits"


class VersionQuality(ModelVersion):
    """A model version seen from the serving side (online accuracy from feedback)."""

    class Meta:
        proxy = True
        verbose_name = "online accuracy"
        verbose_name_plural = "online accuracy"
