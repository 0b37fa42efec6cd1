from django.conf import settings
from django.db import models
from django.db.models import Q

from mlregistry.storage import get_artifact_storage


class Task(models.TextChoices):
    CLASSIFICATION = "classification", "Classification"
    REGRESSION = "regression", "Regression"


class Stage(models.TextChoices):
    NONE = "none", "None"
    STAGING = "staging", "Staging"
    PRODUCTION = "production", "Production"
    ARCHIVED = "archived", "Archived"


class ArtifactFormat(models.TextChoices):
    SKOPS = "skops", "skops (safe)"
    JOBLIB = "joblib", "joblib / pickle (runs code when loaded)"


class VersionSource(models.TextChoices):
    UPLOAD = "upload", "Upload"
    TRAINING = "training", "Training job"


class RegisteredModel(models.Model):
    name = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    task = models.CharField(max_length=20, choices=Task.choices, default=Task.CLASSIFICATION)
    tags = models.JSONField(default=list, blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ModelVersion(models.Model):
    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    stage = models.CharField(max_length=20, choices=Stage.choices, default=Stage.NONE)
    # The stored name is derived from the content (sha256), never from the uploaded file name.
    artifact = models.FileField(storage=get_artifact_storage, max_length=255)
    artifact_format = models.CharField(
        max_length=10, choices=ArtifactFormat.choices, default=ArtifactFormat.SKOPS
    )
    artifact_sha256 = models.CharField(max_length=64, db_index=True)
    artifact_size = models.BigIntegerField()
    library_versions = models.JSONField(default=dict, blank=True)
    input_schema = models.JSONField(default=list, blank=True)
    classes = models.JSONField(null=True, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    params = models.JSONField(default=dict, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    reference_sample = models.JSONField(null=True, blank=True)
    reference_stats = models.JSONField(null=True, blank=True)
    source = models.CharField(
        max_length=20, choices=VersionSource.choices, default=VersionSource.UPLOAD
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model__name", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["model", "version"], name="unique_version_per_model"),
            models.UniqueConstraint(
                fields=["model"],
                condition=Q(stage="production"),
                name="one_production_version_per_model",
            ),
        ]
        permissions = [
            ("promote_modelversion", "Can change the stage of a model version"),
            ("upload_pickle", "Can upload joblib/pickle artifacts (they run code when loaded)"),
        ]

    def __str__(self) -> str:
        return f"{self.model.name} v{self.version}"


class StageTransition(models.Model):
    """Audit row: one per stage change, written in the same transaction as the change."""

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="transitions")
    from_stage = models.CharField(max_length=20, choices=Stage.choices)
    to_stage = models.CharField(max_length=20, choices=Stage.choices)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_name = models.CharField(max_length=150)
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.version}: {self.from_stage} → {self.to_stage} by {self.actor_name}"


# --- issue 6: per-client model restrictions -----------------------------------------------------
class ApiClientPolicy(models.Model):
    """Limits an API client to a list of models; a user without a policy may use every model.

    Read on every prediction through mlregistry.access (cached per user, invalidated on change).
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_client_policy"
    )
    allowed_models = models.ManyToManyField(
        RegisteredModel,
        blank=True,
        related_name="client_policies",
        help_text="The only models this client may use; any other answers 404. Empty = none.",
    )
    note = models.CharField(max_length=200, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "API client policy"
        verbose_name_plural = "API client policies"
        ordering = ["user__username"]

    def __str__(self) -> str:
        return f"policy for {self.user}"
