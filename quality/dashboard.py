"""Reads behind the registry and quality panels of the admin's landing page (the backups panel
is the backups app's own: backups.templatetags.backups_admin)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Prefetch, QuerySet
from django.db.models.functions import TruncHour
from django.utils import timezone

from mlregistry.models import ModelVersion, RegisteredModel, Stage, StageTransition
from quality.models import DriftReport, DriftStatus

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


def drift_alerts(*, limit: int = 5) -> list[dict[str, Any]]:
    """The newest drift reports that flagged drift, newest first, as
    {"when", "label", "version", "features"} (features: see _drifted_feature_tests)."""
    rows = (
        DriftReport.objects.filter(status=DriftStatus.DRIFT)
        .select_related("version__model")
        .order_by("-created_at", "-id")[:limit]
    )
    return [
        {
            "when": row.created_at,
            "label": str(row),
            "version": row.version,
            "features": _drifted_feature_tests(row),
        }
        for row in rows
    ]


def _drifted_feature_tests(row: DriftReport) -> list[dict[str, Any]]:
    """The flagged features of a report that keeps per-feature tests (name, raw and adjusted
    p-value): a raw p-value alone overstates the evidence when many features are tested."""
    entries = row.features
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
