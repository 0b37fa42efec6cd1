"""What predictions' retention prunes (registered with config.retention by its AppConfig):
prediction-log rows and finished batch jobs (with their files) past their retention."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings

from config.retention import prune_register
from mlregistry.audit import Actor


def _prediction_logs(*, now: datetime, dry_run: bool, actor: Actor) -> int:
    from predictions.services import prediction_log_prune

    older_than = now - timedelta(days=settings.PREDICTION_LOG_RETENTION_DAYS)
    return prediction_log_prune(older_than=older_than, dry_run=dry_run, actor=actor)


def _batch_jobs(*, now: datetime, dry_run: bool, actor: Actor) -> int:
    from predictions.batch import batch_jobs_prune

    older_than = now - timedelta(days=settings.BATCH_JOB_RETENTION_DAYS)
    return batch_jobs_prune(older_than=older_than, dry_run=dry_run, actor=actor)


def register() -> None:
    prune_register("prediction_logs_pruned", _prediction_logs, label="prediction logs")
    # Before the artifact sweep, which runs last: a pruned job's files go in this same run.
    prune_register("batch_jobs_pruned", _batch_jobs, label="finished batch jobs")
