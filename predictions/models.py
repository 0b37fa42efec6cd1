from django.db import models

from mlregistry.models import ModelVersion, RegisteredModel


class PredictionLog(models.Model):
    """What was served: one row per predicted row (a batch shares its request_id).

    Holds client data: pruned by PREDICTION_LOG_RETENTION_DAYS, and `features` is left empty
    when PREDICTION_LOG_STORE_FEATURES is false.
    """

    request_id = models.CharField(max_length=128, db_index=True)
    row_index = models.PositiveIntegerField(default=0)
    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="+")
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="predictions")
    features = models.JSONField(null=True, blank=True)
    output = models.JSONField(null=True)
    confidence = models.FloatField(null=True, blank=True)
    latency_ms = models.FloatField(default=0)
    cached = models.BooleanField(default=False)
    client_id = models.CharField(max_length=200, blank=True)
    actual = models.JSONField(null=True, blank=True)
    feedback_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["version", "created_at"], name="predlog_version_time")]
        constraints = [
            models.UniqueConstraint(fields=["request_id", "row_index"], name="unique_request_row")
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
