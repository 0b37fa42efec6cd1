"""Reads behind the admin's landing page. Other apps' tables (backups, drift reports) are read
through the app registry, so the dashboard works whichever of them is installed and migrated."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.apps import apps
from django.db import DatabaseError
from django.db.models import Count, Model, Prefetch, QuerySet
from django.db.models.functions import TruncHour
from django.utils import timezone

from mlregistry.models import ModelVersion, RegisteredModel, Stage, StageTransition

logger = logging.getLogger(__name__)


@dataclass
class HourlyCount:
    hour: datetime
    count: int


@dataclass
class PredictionVolume:
    total: int
    per_model: dict[str, int]
    hourly: list[HourlyCount] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return max((h.count for h in self.hourly), default=0)


def dashboard_models() -> QuerySet[RegisteredModel]:
    """Every model with its production version prefetched as `production` (a list of 0 or 1)."""
    production = ModelVersion.objects.filter(stage=Stage.PRODUCTION).only(
        "id", "model_id", "version", "stage", "metrics", "updated_at"
    )
    return (
        RegisteredModel.objects.annotate(version_count=Count("versions"))
        .prefetch_related(Prefetch("versions", queryset=production, to_attr="production"))
        .order_by("name")
    )


def dashboard_recent_transitions(*, limit: int = 10) -> QuerySet[StageTransition]:
    return StageTransition.objects.select_related("version__model").order_by("-created_at", "-id")[
        :limit
    ]


def prediction_volume(*, hours: int = 24, now: datetime | None = None) -> PredictionVolume:
    """Rows served in the last `hours`, in total, per model and per hour (oldest hour first)."""
    from predictions.models import PredictionLog

    now = now or timezone.now()
    since = now - timedelta(hours=hours)
    recent = PredictionLog.objects.filter(created_at__gte=since)
    per_model = dict(
        recent.values_list("model__name").annotate(n=Count("id")).order_by("model__name")
    )
    by_hour = {
        row["hour"]: row["n"]
        for row in recent.annotate(hour=TruncHour("created_at"))
        .values("hour")
        .annotate(n=Count("id"))
    }
    start = since.replace(minute=0, second=0, microsecond=0)
    hourly = [
        HourlyCount(hour=hour, count=by_hour.get(hour, 0))
        for hour in (start + timedelta(hours=i) for i in range(hours + 1))
        if hour <= now
    ]
    return PredictionVolume(total=sum(per_model.values()), per_model=per_model, hourly=hourly)


def _optional_model(app_label: str, model_name: str) -> type[Model] | None:
    try:
        return apps.get_model(app_label, model_name)
    except LookupError:
        return None


def _field_names(model: type[Model]) -> set[str]:
    return {f.name for f in model._meta.get_fields()}


def _first_field(names: set[str], *candidates: str) -> str | None:
    return next((c for c in candidates if c in names), None)


def _backup_summary(row: Model, when_field: str | None) -> dict[str, Any]:
    status = getattr(row, "status", None)
    if hasattr(row, "get_status_display"):
        status = row.get_status_display()
    verified = getattr(row, "verified", None)
    if verified is None and getattr(row, "verified_at", None) is not None:
        verified = True
    return {
        "when": getattr(row, when_field) if when_field else None,
        "label": str(row),
        "status": status,
        "verified": verified,
    }


def last_backup() -> dict[str, Any] | None:
    """The newest backup as {"when", "label", "status", "verified", "last_verified"}; None when
    there is none or the backups app has no Backup model yet. `last_verified` is the newest
    verified one when the newest is not (running, failed), so the page shows what restore has."""
    backup = _optional_model("backups", "Backup")
    if backup is None:
        return None
    names = _field_names(backup)
    # started_at before finished_at: a running backup has no finish time yet.
    when_field = _first_field(names, "created_at", "started_at", "finished_at")
    order = f"-{when_field}" if when_field else "-pk"
    try:
        row = backup.objects.order_by(order).first()
        verified_row = None
        if row is not None and "verified_at" in names and row.verified_at is None:
            verified_row = (
                backup.objects.filter(verified_at__isnull=False).order_by("-verified_at").first()
            )
    except DatabaseError:  # the table is not migrated yet
        logger.warning("backups table is not readable", exc_info=True)
        return None
    if row is None:
        return None
    summary = _backup_summary(row, when_field)
    summary["last_verified"] = _backup_summary(verified_row, when_field) if verified_row else None
    return summary


# Where DriftReport may live; the first app that has one is read.
DRIFT_APPS = ("quality", "predictions", "drift", "mlregistry")


def drift_alerts(*, limit: int = 5) -> list[dict[str, Any]] | None:
    """The newest drift reports that flagged drift; None when the drift app is not installed."""
    report = next(
        (m for label in DRIFT_APPS if (m := _optional_model(label, "DriftReport")) is not None),
        None,
    )
    if report is None:
        return None
    names = _field_names(report)
    flag = _first_field(names, "drift_detected", "drifted", "is_drift", "alert")
    when_field = _first_field(names, "created_at", "computed_at", "finished_at")
    try:
        rows = report.objects.all()
        if flag:
            rows = rows.filter(**{flag: True})
        elif "status" in names:
            rows = rows.filter(status__in=["drift", "alert", "drifted", "warning"])
        if "version" in names:
            rows = rows.select_related("version__model")
        rows = list(rows.order_by(f"-{when_field}" if when_field else "-pk")[:limit])
    except DatabaseError:
        logger.warning("drift reports are not readable", exc_info=True)
        return None
    return [
        {
            "when": getattr(row, when_field) if when_field else None,
            "label": str(row),
            "version": getattr(row, "version", None),
            "features": _drifted_feature_tests(row),
        }
        for row in rows
    ]


def _drifted_feature_tests(row: Any) -> list[dict[str, Any]]:
    """The flagged features of a report that keeps per-feature tests (name, raw and adjusted
    p-value): a raw p-value alone overstates the evidence when many features are tested."""
    entries = getattr(row, "features", None)
    if not isinstance(entries, list):
        return []
    return [
        {
            "feature": entry.get("feature"),
            "p_value": entry.get("p_value"),
            "p_value_adjusted": entry.get("p_value_adjusted"),
        }
        for entry in entries
        if isinstance(entry, dict) and entry.get("drift")
    ]


def backups_installed() -> bool:
    return _optional_model("backups", "Backup") is not None
