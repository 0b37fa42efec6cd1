"""What quality's retention prunes (registered with config.retention by QualityConfig): drift
reports past their retention, and dataset files no row references (the artifact sweep's
`datasets/` namespace)."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings

from config.retention import prune_register, store_namespace_register
from mlregistry.audit import Actor


def _datasets_referencing(names: list[str]) -> set[str]:
    from quality.models import Dataset

    return set(Dataset.objects.filter(file__in=names).values_list("file", flat=True))


def _drift_reports(*, now: datetime, dry_run: bool, actor: Actor) -> int:
    from quality.drift import drift_reports_prune

    older_than = now - timedelta(days=settings.DRIFT_REPORT_RETENTION_DAYS)
    return drift_reports_prune(older_than=older_than, dry_run=dry_run, actor=actor)


def register() -> None:
    store_namespace_register("datasets/", _datasets_referencing)
    prune_register("drift_reports_pruned", _drift_reports, label="drift reports")
