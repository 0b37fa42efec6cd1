"""Data drift: per-feature two-sample tests between a version's reference sample and the
features it served in a window (Kolmogorov-Smirnov for numbers, chi-squared for categories).

Writes (`drift_check`, `drift_report_create`, `drift_reports_prune`) and reads
(`drift_reports_list`, `latest_drift_reports`) of DriftReport live here, apart from the predict
path's services.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, QuerySet, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from config.pruning import delete_in_batches
from mlregistry.models import ModelVersion, RegisteredModel, Stage
from predictions.models import DriftReport, DriftStatus, PredictionLog

logger = logging.getLogger(__name__)

NUMERIC_TYPES = {"float", "integer"}
CATEGORICAL_TYPES = {"string", "boolean"}


def prediction_log_flush_if_available() -> bool:
    """Writes out buffered prediction-log rows so a check counts everything already served.

    The buffer belongs to the predict path (predictions.services.prediction_log_flush); where
    it does not exist, every served row is already in the table and there is nothing to flush.
    """
    try:
        from predictions.services import prediction_log_flush  # type: ignore[attr-defined]
    except ImportError:
        return False
    prediction_log_flush()
    return True


def _numbers(values: Iterable[Any]) -> list[float]:
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out.append(float(value))
    return out


def _categories(values: Iterable[Any]) -> list[str]:
    return [str(v) for v in values if v is not None]


def _ks_entry(name: str, reference: list[Any], served: list[Any], threshold: float) -> dict:
    from scipy.stats import ks_2samp

    ref, cur = _numbers(reference), _numbers(served)
    if len(ref) < 2 or len(cur) < 2:
        return _untested(name, "ks", "fewer than 2 numeric values on one side")
    result = ks_2samp(ref, cur)
    p_value = float(result.pvalue)
    return {
        "feature": name,
        "test": "ks",
        "statistic": float(result.statistic),
        "p_value": p_value,
        "drift": p_value < threshold,
    }


def _chi2_entry(name: str, reference: list[Any], served: list[Any], threshold: float) -> dict:
    from scipy.stats import chi2_contingency

    ref, cur = Counter(_categories(reference)), Counter(_categories(served))
    if not ref or not cur:
        return _untested(name, "chi2", "no values on one side")
    categories = sorted(set(ref) | set(cur))
    if len(categories) < 2:
        # One category on both sides: the distributions are identical.
        return {"feature": name, "test": "chi2", "statistic": 0.0, "p_value": 1.0, "drift": False}
    table = [[ref[c] for c in categories], [cur[c] for c in categories]]
    statistic, p_value, _, _ = chi2_contingency(table)
    return {
        "feature": name,
        "test": "chi2",
        "statistic": float(statistic),
        "p_value": float(p_value),
        "drift": float(p_value) < threshold,
    }


def _untested(name: str, test: str, reason: str) -> dict:
    return {
        "feature": name,
        "test": test,
        "statistic": None,
        "p_value": None,
        "drift": False,
        "note": reason,
    }


def feature_drift(
    *,
    schema: list[dict[str, Any]],
    reference: list[dict[str, Any]],
    served: list[dict[str, Any]],
    threshold: float,
) -> list[dict[str, Any]]:
    """One entry per schema feature: its test, statistic, p-value and drift flag."""
    entries = []
    for feature in schema:
        name = feature["name"]
        ref_values = [row.get(name) for row in reference]
        cur_values = [row.get(name) for row in served]
        if feature.get("type", "float") in CATEGORICAL_TYPES:
            entries.append(_chi2_entry(name, ref_values, cur_values, threshold))
        else:
            entries.append(_ks_entry(name, ref_values, cur_values, threshold))
    return entries


def served_features_list(
    *, version: ModelVersion, start: datetime, end: datetime, limit: int
) -> list[dict[str, Any]]:
    """The newest `limit` feature rows this version served in [start, end)."""
    rows = (
        PredictionLog.objects.filter(version=version, created_at__gte=start, created_at__lt=end)
        .exclude(features=None)
        .order_by("-created_at", "-id")
        .values_list("features", flat=True)[:limit]
    )
    return [row for row in rows if isinstance(row, dict)]


def drift_report_create(
    *,
    version: ModelVersion,
    window_end: datetime,
    window_hours: int | None = None,
    min_samples: int | None = None,
    threshold: float | None = None,
) -> DriftReport:
    """Compares one version's served features with its reference; writes (or, for the same
    window, rewrites) its DriftReport."""
    hours = window_hours or settings.DRIFT_WINDOW_HOURS
    minimum = min_samples or settings.DRIFT_MIN_SAMPLES
    limit = threshold if threshold is not None else settings.DRIFT_P_VALUE_THRESHOLD
    window_start = window_end - timedelta(hours=hours)
    reference = version.reference_sample or []
    served = served_features_list(
        version=version, start=window_start, end=window_end, limit=settings.DRIFT_MAX_SAMPLES
    )
    features: list[dict[str, Any]] = []
    if not reference:
        status = DriftStatus.NO_REFERENCE
    elif len(served) < minimum:
        status = DriftStatus.INSUFFICIENT_DATA
    else:
        features = feature_drift(
            schema=version.input_schema or [], reference=reference, served=served, threshold=limit
        )
        status = DriftStatus.DRIFT if any(f["drift"] for f in features) else DriftStatus.OK
    with transaction.atomic():
        report, _ = DriftReport.objects.update_or_create(
            version=version,
            window_end=window_end,
            defaults={
                "model_id": version.model_id,
                "status": status,
                "window_start": window_start,
                "reference_size": len(reference),
                "sample_size": len(served),
                "threshold": limit,
                "features": features,
                "drifted_features": [f["feature"] for f in features if f["drift"]],
            },
        )
    logger.info(
        "drift checked",
        extra={
            "model": version.model.name,
            "version": version.version,
            "status": status,
            "sample_size": len(served),
            "drifted": report.drifted_features,
        },
    )
    return report


def drift_check(
    *, as_of: datetime | None = None, model: RegisteredModel | None = None
) -> list[DriftReport]:
    """Flushes the prediction-log buffer, then reports on every production version (or
    `model`'s) for the window ending at `as_of` (default: now)."""
    prediction_log_flush_if_available()
    window_end = as_of or timezone.now()
    versions = ModelVersion.objects.filter(stage=Stage.PRODUCTION).select_related("model")
    if model is not None:
        versions = versions.filter(model=model)
    return [drift_report_create(version=v, window_end=window_end) for v in versions]


TESTED_STATUSES = (DriftStatus.OK, DriftStatus.DRIFT)


def _newest_report_ids(reports: QuerySet[DriftReport]) -> set[int]:
    """Ids of the newest of `reports` per version."""
    ranked = reports.annotate(
        rank=Window(
            RowNumber(),
            partition_by=[F("version_id")],
            order_by=[F("window_end").desc(), F("id").desc()],
        )
    )
    return set(ranked.filter(rank=1).values_list("id", flat=True))


def drift_reports_prune(
    *, older_than: datetime, batch_size: int = 1000, dry_run: bool = False
) -> int:
    """Deletes drift reports written before `older_than`, in batches, except each version's
    newest report and newest tested one (what the admin and /metrics show); returns how many
    went (with `dry_run`, how many would, deleting nothing)."""
    keep = _newest_report_ids(DriftReport.objects.all())
    keep |= _newest_report_ids(DriftReport.objects.filter(status__in=TESTED_STATUSES))
    expired = DriftReport.objects.filter(created_at__lt=older_than).exclude(id__in=keep)
    if dry_run:
        return expired.count()
    return delete_in_batches(expired, batch_size=batch_size)


def drift_reports_list(
    *, model: RegisteredModel, version: int | None = None
) -> QuerySet[DriftReport]:
    """A model's drift reports, newest window first."""
    reports = DriftReport.objects.filter(model=model).select_related("version", "model")
    if version is not None:
        reports = reports.filter(version__version=version)
    return reports.order_by("-window_end", "-id")


def latest_drift_reports() -> list[DriftReport]:
    """The newest tested report of each production version (what the metrics expose)."""
    latest: dict[int, DriftReport] = {}
    reports = (
        DriftReport.objects.filter(version__stage=Stage.PRODUCTION, status__in=TESTED_STATUSES)
        .select_related("model")
        .order_by("version_id", "-window_end", "-id")
    )
    for report in reports.iterator():
        latest.setdefault(report.version_id, report)
    return list(latest.values())
