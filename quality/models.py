"""The quality loop's records: training data, retraining runs and drift reports.

The tables keep the names they had in mlregistry and predictions (`db_table`): the models moved
here without moving a row (migrations 0001 of this app are state-only).
"""

from django.conf import settings
from django.db import models

from mlregistry.models import ModelVersion, RegisteredModel
from mlregistry.storage import get_artifact_storage

# --- Model-quality loop: datasets and training jobs --------------------------------


class DatasetSource(models.TextChoices):
    FILE = "file", "Uploaded file (CSV / Parquet)"
    SQL = "sql", "SQL query"


class FileFormat(models.TextChoices):
    CSV = "csv", "CSV"
    PARQUET = "parquet", "Parquet"


class MissingPolicy(models.TextChoices):
    DROP = "drop", "Drop rows with a missing value"
    IMPUTE_MEAN = "impute_mean", "Impute the column mean"
    IMPUTE_MEDIAN = "impute_median", "Impute the column median"
    ERROR = "error", "Fail the job"


class Dataset(models.Model):
    """Training data: an uploaded file (stored under its SHA-256) or a read-only SQL query."""

    name = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    source = models.CharField(max_length=10, choices=DatasetSource.choices)
    file = models.FileField(storage=get_artifact_storage, max_length=255, blank=True)
    file_format = models.CharField(max_length=10, choices=FileFormat.choices, blank=True)
    file_sha256 = models.CharField(max_length=64, blank=True)
    # A Parquet file's bytes in blocks of file_block_size and each block's SHA-256, recorded
    # with file_sha256: a batch job over the file checks each block a chunk reads
    # (predictions.batch._VerifiedInput). Empty for a CSV, and for a file registered before.
    file_size = models.PositiveBigIntegerField(null=True, blank=True)
    file_block_size = models.PositiveIntegerField(null=True, blank=True)
    file_block_sha256 = models.BinaryField(blank=True, default=b"", db_default=b"", editable=False)
    sql_connection = models.CharField(max_length=100, blank=True)
    sql_query = models.TextField(blank=True)
    target_column = models.CharField(max_length=200)
    feature_columns = models.JSONField(default=list)
    missing_policy = models.CharField(
        max_length=20, choices=MissingPolicy.choices, default=MissingPolicy.DROP
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "mlregistry_dataset"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class TrainingPolicy(models.TextChoices):
    STAGE_ONLY = "stage_only", "Register the candidate in staging only"
    AUTO_PROMOTE = "auto_promote", "Promote the candidate when it beats the champion"


# A seed scikit-learn takes (up to 2**32 - 1) that the column holds on every database (a
# 32-bit signed integer on PostgreSQL).
RANDOM_STATE_MAX = 2**31 - 1


class TrainingStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class TrainingDecision(models.TextChoices):
    PENDING = "", "—"
    PROMOTED = "promoted", "Promoted: the candidate beat the champion"
    PROMOTED_NO_CHAMPION = "promoted_no_champion", "Promoted: there was no champion"
    KEPT_CHAMPION = "kept_champion", "Kept the champion: the candidate was not better enough"
    STAGED = "staged", "Staged only (policy)"


class TrainingJob(models.Model):
    """One retraining run: its settings, its numbers and the decision it took."""

    model = models.ForeignKey(
        RegisteredModel, on_delete=models.CASCADE, related_name="training_jobs"
    )
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="training_jobs")
    # Empty = clone the production version's estimator with its parameters.
    estimator = models.CharField(max_length=100, blank=True)
    estimator_params = models.JSONField(default=dict, blank=True)
    policy = models.CharField(
        max_length=20, choices=TrainingPolicy.choices, default=TrainingPolicy.STAGE_ONLY
    )
    metric = models.CharField(max_length=50, blank=True)
    margin = models.FloatField(default=0.0)
    cv_folds = models.PositiveSmallIntegerField(default=5)
    holdout_fraction = models.FloatField(default=0.2)
    random_state = models.IntegerField(default=0)
    status = models.CharField(
        max_length=20, choices=TrainingStatus.choices, default=TrainingStatus.QUEUED
    )
    decision = models.CharField(
        max_length=30, choices=TrainingDecision.choices, default="", blank=True
    )
    error_type = models.CharField(max_length=50, blank=True)
    error = models.TextField(blank=True)
    cv_scores = models.JSONField(default=list, blank=True)
    candidate_score = models.FloatField(null=True, blank=True)
    champion_score = models.FloatField(null=True, blank=True)
    champion_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Set once, under the job's row lock: a retry finds it and never registers a second one.
    candidate_version = models.OneToOneField(
        ModelVersion,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="training_job",
    )
    details = models.JSONField(default=dict, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    # A recurring job is the template the retraining schedule copies (see retraining_schedule_run).
    recurring = models.BooleanField(default=False)
    template = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="scheduled_runs"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Stamped while the job runs (config.job_heartbeats): the reaper fails a running job whose
    # worker stopped stamping it.
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "mlregistry_trainingjob"
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"training job #{self.pk} for {self.model.name}"

    @property
    def actor_name(self) -> str:
        return f"job:training:{self.pk}"


# --- Model-quality loop: drift reports ----------------------------------------------


class DriftStatus(models.TextChoices):
    OK = "ok", "No drift"
    DRIFT = "drift", "Drift detected"
    NO_REFERENCE = "no_reference", "No reference sample"
    INSUFFICIENT_DATA = "insufficient_data", "Too few served rows"


class DriftReport(models.Model):
    """One comparison of a version's served features (in a window) with its reference sample."""

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="+")
    version = models.ForeignKey(
        ModelVersion, on_delete=models.CASCADE, related_name="drift_reports"
    )
    status = models.CharField(max_length=20, choices=DriftStatus.choices)
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    reference_size = models.PositiveIntegerField(default=0)
    sample_size = models.PositiveIntegerField(default=0)
    threshold = models.FloatField()
    # [{"feature", "test", "statistic", "p_value", "p_value_adjusted", "effect_size_measure",
    #   "effect_size", "min_effect_size", "drift"}] in input-schema order (quality.drift).
    # `threshold` applies to the adjusted p-value.
    features = models.JSONField(default=list)
    drifted_features = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        db_table = "predictions_driftreport"
        ordering = ["-window_end", "-id"]
        constraints = [
            # A retried or repeated check of the same window updates its report.
            models.UniqueConstraint(fields=["version", "window_end"], name="unique_drift_window")
        ]

    def __str__(self) -> str:
        return f"drift {self.version} @ {self.window_end:%Y-%m-%dT%H:%M:%S%z}: {self.status}"
