"""What the backups app's retention prunes (registered with config.retention by its
AppConfig): backups past BACKUP_RETENTION_DAYS and job runs past JOB_RUN_RETENTION_DAYS."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings

from config.retention import prune_register


def _backups(*, now: datetime, dry_run: bool, actor: str) -> list[int]:
    from backups.services import backup_retention_apply

    return backup_retention_apply(now=now, dry_run=dry_run, actor=actor)


def _job_runs(*, now: datetime, dry_run: bool, actor: str) -> int:
    from backups.services import job_runs_prune

    older_than = now - timedelta(days=settings.JOB_RUN_RETENTION_DAYS)
    return job_runs_prune(older_than=older_than, dry_run=dry_run, actor=actor)


def register() -> None:
    prune_register("backups_deleted", _backups, label="backups", order=50)
    prune_register("job_runs_pruned", _job_runs, label="job runs")
