import re

from django.conf import settings
from django.core.exceptions import ValidationError
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
    IMPORT = "import", "Import"


# What the seeds' /predict/{model_id} alias reads as a database id: ASCII digits only, as
# Django's <int:...> converter reads them (never str.isdigit, which also takes '١٦' or '²').
MODEL_ID_PATTERN = re.compile(r"[0-9]+")


def validate_not_an_id(name: str) -> None:
    """Refuses a model name made only of digits: /predict/{model_id} reads such a string as a
    database id, so the name could address another model."""
    if MODEL_ID_PATTERN.fullmatch(name):
        raise ValidationError(
            "A model name cannot be made only of digits (it would read as a model id); "
            "add a letter, e.g. 'model-%(name)s'.",
            code="numeric_name",
            params={"name": name},
        )


class RegisteredModel(models.Model):
    name = models.SlugField(max_length=100, unique=True, validators=[validate_not_an_id])
    description = models.TextField(blank=True)
    task = models.CharField(max_length=20, choices=Task.choices, default=Task.CLASSIFICATION)
    # key -> value strings (mlregistry.tags); filtered by ?tag=, GIN-indexed on Postgres.
    tags = models.JSONField(default=dict, blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # The highest version number ever given, deleted versions included: numbers are never
    # reused (as MLflow), so a client pinned to /versions/3/ never reaches another model.
    last_version_number = models.PositiveIntegerField(default=0, editable=False)

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
    # key -> value strings (mlregistry.tags); filtered by ?tag=, GIN-indexed on Postgres.
    tags = models.JSONField(default=dict, blank=True)
    # Lineage (mlregistry.lineage): where the version came from, set once at registration.
    run_id = models.CharField(max_length=200, blank=True)
    git_commit = models.CharField(max_length=64, blank=True)
    source_url = models.URLField(max_length=2000, blank=True)
    training_dataset_uri = models.CharField(max_length=2000, blank=True)
    training_dataset_sha256 = models.CharField(max_length=64, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model__name", "-version"]
        indexes = [
            # The version list's filters (?stage=, ?run_id=) within one model.
            models.Index(fields=["model", "stage"], name="version_model_stage_idx"),
            models.Index(fields=["model", "run_id"], name="version_model_run_idx"),
        ]
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
            ("download_modelversion", "Can download model artifacts through the API"),
        ]

    def __str__(self) -> str:
        return f"{self.model.name} v{self.version}"


class ModelAlias(models.Model):
    """A named pointer (`champion`, `shadow`, ...) to one version of its model, moved only by
    mlregistry.services.model_alias_set / model_alias_delete. Rules: mlregistry.aliases."""

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="aliases")
    alias = models.CharField(max_length=64)
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="aliases")
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The user's name or a job's name ("job:import"), kept when the user goes.
    updated_by_name = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model__name", "alias"]
        constraints = [
            # The backstop of model_alias_set's lock: one pointer per name per model.
            models.UniqueConstraint(fields=["model", "alias"], name="unique_alias_per_model"),
        ]

    def __str__(self) -> str:
        return f"{self.model.name}@{self.alias}"


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


# --- Per-client model restrictions -----------------------------------------------------
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


# --- Audit trail ---------------------------------------------------------------------


class AuditEvent(models.Model):
    """One row per state change made through a service, written in the service's transaction
    (mlregistry.audit.audit_record), so a change that rolls back leaves no row.

    `changes` maps each changed field to `[old, new]` (JSON values; `old` is null on create,
    `new` is null on delete). `object_id` is a string because tokens are keyed by text and a
    deleted object's id must stay readable. `model_name` names the registered model the event
    concerns ("" when none), so the trail of a model survives its deletion."""

    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_name = models.CharField(max_length=150)
    verb = models.CharField(max_length=40)
    object_type = models.CharField(max_length=60)
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=200, blank=True)
    model_name = models.CharField(max_length=200, blank=True)
    changes = models.JSONField(default=dict, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["object_type", "object_id"], name="audit_object_idx"),
            models.Index(fields=["model_name", "-created_at"], name="audit_model_idx"),
            models.Index(fields=["actor_name", "-created_at"], name="audit_actor_idx"),
            models.Index(fields=["verb", "-created_at"], name="audit_verb_idx"),
        ]

    def __str__(self) -> str:
        return (
            f"{self.actor_name} {self.verb} {self.object_type} {self.object_repr or self.object_id}"
        )


# Webhooks live in their own module; imported here so Django registers them with this app.
from mlregistry.webhooks.models import Webhook, WebhookAttempt, WebhookDelivery  # noqa: E402, F401
