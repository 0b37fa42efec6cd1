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


# --- Batch scoring jobs (predictions.batch) -----------------------------------------


class BatchStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


BATCH_FINISHED = (BatchStatus.SUCCEEDED, BatchStatus.FAILED, BatchStatus.CANCELLED)


class BatchFormat(models.TextChoices):
    CSV = "csv", "CSV"
    PARQUET = "parquet", "Parquet"


class BatchJob(models.Model):
    """One file scored by a version, chunk by chunk across workers (predictions.batch)."""

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="batch_jobs")
    # Kept when the version is deleted: the job's outputs still say which version answered.
    version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="batch_jobs"
    )
    version_number = models.PositiveIntegerField()
    alias = models.CharField(max_length=100, blank=True)
    # The input: a file in the artifact storage (an upload, or a dataset's file, by id: the
    # dataset may be deleted later, the job keeps the name and digest of what it read).
    input_name = models.CharField(max_length=500)
    input_format = models.CharField(max_length=10, choices=BatchFormat.choices)
    input_sha256 = models.CharField(max_length=64)
    input_label = models.CharField(max_length=300, blank=True)
    dataset_id = models.PositiveIntegerField(null=True, blank=True)
    output_format = models.CharField(
        max_length=10, choices=BatchFormat.choices, default=BatchFormat.PARQUET
    )
    chunk_rows = models.PositiveIntegerField()
    max_error_share = models.FloatField()
    status = models.CharField(
        max_length=20, choices=BatchStatus.choices, default=BatchStatus.QUEUED, db_index=True
    )
    error_type = models.CharField(max_length=50, blank=True)
    error = models.TextField(blank=True)
    rows_total = models.PositiveBigIntegerField(null=True, blank=True)
    rows_done = models.PositiveBigIntegerField(default=0)
    rows_failed = models.PositiveBigIntegerField(default=0)
    chunks_total = models.PositiveIntegerField(null=True, blank=True)
    chunks_done = models.PositiveIntegerField(default=0)
    output_name = models.CharField(max_length=500, blank=True)
    errors_name = models.CharField(max_length=500, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # Stamped by every chunk task while it runs (config.job_heartbeats): the reaper fails a
    # running job none of whose workers is alive.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # When this run found the bytes it scored to match input_sha256 (a staged CSV, a dataset's
    # file hashed by the finish) or its block digests (each block as a chunk read it); the
    # finish publishes no output without it. Cleared when a job is resumed.
    input_verified_at = models.DateTimeField(null=True, blank=True)
    # The Parquet file the chunks read (the input, or a CSV input as planning staged it): its
    # size, and its bytes in blocks of parquet_block_size (the last one shorter), each block's
    # SHA-256 recorded by the read that wrote or first hashed the file (the upload's, the
    # dataset's when it was registered, the staging's). Planning and chunks check each block
    # they read before they use it (predictions.batch._VerifiedInput). Empty for a dataset
    # registered before block digests, whose file the finish hashes whole. Database defaults:
    # a worker of the previous release, mid-upgrade, inserts rows without these columns.
    parquet_size = models.PositiveBigIntegerField(null=True, blank=True)
    parquet_block_size = models.PositiveIntegerField(null=True, blank=True)
    parquet_block_sha256 = models.BinaryField(
        blank=True, default=b"", db_default=b"", editable=False
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("cancel_batchjob", "Can cancel or resume batch jobs")]

    def __str__(self) -> str:
        return f"batch job {self.pk} ({self.model_id} v{self.version_number}): {self.status}"


class BatchChunk(models.Model):
    """Rows [row_start, row_start + row_count) of a batch job's input: one task's share."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        DONE = "done", "Done"

    job = models.ForeignKey(BatchJob, on_delete=models.CASCADE, related_name="chunks")
    index = models.PositiveIntegerField()
    row_start = models.PositiveBigIntegerField()
    row_count = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    rows_failed = models.PositiveIntegerField(default=0)
    attempts = models.PositiveIntegerField(default=0)
    seconds = models.FloatField(default=0)
    # Scored from bytes checked against the job's block digests; a chunk a worker of the
    # previous release scored (mid-upgrade) is not, and the finish then hashes the input whole.
    verified = models.BooleanField(default=False, db_default=False)

    class Meta:
        ordering = ["job", "index"]
        constraints = [
            models.UniqueConstraint(fields=["job", "index"], name="unique_batch_chunk_index")
        ]
        # Every chunk asks which jobs have chunks queued (their heartbeats); finished jobs'
        # chunks, the table's bulk until retention, stay out of that index.
        indexes = [
            models.Index(
                fields=["job"],
                condition=models.Q(status="pending"),
                name="batch_chunk_pending",
            )
        ]

    def __str__(self) -> str:
        return f"{self.job_id}[{self.index}] {self.status}"
