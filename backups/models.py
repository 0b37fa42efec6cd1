from django.db import models


class BackupStatus(models.TextChoices):
    RUNNING = "running", "Running"
    VERIFIED = "verified", "Verified"
    FAILED = "failed", "Failed"
    CORRUPT = "corrupt", "Corrupt (verification failed)"


class Backup(models.Model):
    """One backup on disk: a database dump, an artifacts archive and their manifest.

    `slot` is the idempotency key: a scheduled slot that runs twice (a retried or duplicated
    task) finds its row and yields the same backup instead of a second one.
    """

    slot = models.CharField(max_length=100, unique=True)
    status = models.CharField(
        max_length=20, choices=BackupStatus.choices, default=BackupStatus.RUNNING, db_index=True
    )
    # Folder name in the backup storage; empty until the backup has been stored.
    path = models.CharField(max_length=255, blank=True)
    database_vendor = models.CharField(max_length=20, blank=True)
    database_size = models.BigIntegerField(default=0)
    artifacts_size = models.BigIntegerField(default=0)
    artifact_count = models.PositiveIntegerField(default=0)
    manifest_sha256 = models.CharField(max_length=64, blank=True)
    # sha256 of each file of the backup, copied from the manifest for the admin and for checks.
    checksums = models.JSONField(default=dict, blank=True)
    row_counts = models.JSONField(default=dict, blank=True)
    actor = models.CharField(max_length=150)
    attempts = models.PositiveSmallIntegerField(default=1)
    started_at = models.DateTimeField(db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Stamped while the backup runs (config.job_heartbeats): the reaper fails a running backup
    # whose worker stopped stamping it.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # Set by the last verification that passed; cleared when a later one fails.
    verified_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"backup {self.slot} ({self.status})"

    @property
    def total_size(self) -> int:
        return self.database_size + self.artifacts_size


# What job_run records once a run is over. Pruning deletes only rows with one of these: a row
# with any other outcome would be a run still in progress.
FINISHED_OUTCOMES = ("success", "failure", "retry")
# Upper bounds (seconds) of the job duration histogram in /metrics; JobRunTally counts by them.
DURATION_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600)


class JobRun(models.Model):
    """One finished run of a scheduled job, whoever started it (beat, a command, the admin).

    Kept in the database so /metrics of any process reports every worker's runs.
    """

    job = models.CharField(max_length=100)
    outcome = models.CharField(max_length=20)  # success | failure | retry
    started_at = models.DateTimeField()
    duration_seconds = models.FloatField()
    details = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["job", "outcome"], name="jobrun_job_outcome")]

    def __str__(self) -> str:
        return f"{self.job} {self.outcome} at {self.started_at:%Y-%m-%dT%H:%M:%S%z}"


class JobRunTally(models.Model):
    """Job runs pruned from JobRun, added up per job and outcome.

    /metrics reports job runs as Prometheus counters (live rows plus these). Without the tally,
    pruning would make a counter go down, which Prometheus reads as a reset and `increase()` as
    that many new runs: pruning an old failure would fire the JobFailures alert.
    """

    job = models.CharField(max_length=100)
    outcome = models.CharField(max_length=20)
    runs = models.PositiveBigIntegerField(default=0)
    duration_seconds_sum = models.FloatField(default=0.0)
    # Pruned runs that took at most each bound of DURATION_BUCKETS, keyed by str(bound).
    duration_buckets = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "outcome"], name="unique_job_run_tally")
        ]

    def __str__(self) -> str:
        return f"{self.job} {self.outcome}: {self.runs} pruned run(s)"
