"""Data drift: per-feature two-sample tests between a version's reference sample and the
features it served in a window (Kolmogorov-Smirnov for numbers, chi-squared for categories).

A feature drifts only when both hold:
- its p-value, adjusted for testing every feature of the model at once (Benjamini-Hochberg), is
  under DRIFT_P_VALUE_THRESHOLD. Without the adjustment a 20-feature model raises a false alarm
  in 1 - 0.95**20 = 64% of windows drawn from the reference distribution itself;
- its effect size reaches a floor (DRIFT_MIN_KS_STATISTIC for numbers, DRIFT_MIN_PSI for
  categories): with thousands of rows a test finds differences too small to matter.

Writes (`drift_check`, `drift_report_create`, `drift_reports_prune`) and reads
(`drift_reports_list`, `latest_drift_reports`) of DriftReport live here, apart from the predict
path's services.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import F, QuerySet, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from config.events import event_publish
from config.numbers import finite_number
from config.pruning import delete_in_batches
from mlregistry.audit import Actor, prune_auditor
from mlregistry.models import ModelVersion, RegisteredModel, Stage
from predictions.models import PredictionLog
from predictions.services import prediction_log_flush
from quality.models import DriftReport, DriftStatus

logger = logging.getLogger(__name__)

NUMERIC_TYPES = {"float", "integer"}
CATEGORICAL_TYPES = {"string", "boolean"}

# Benjamini-Hochberg rather than Bonferroni: when no feature drifts (every window drawn from the
# reference) both keep the chance of any alarm at the threshold; when one upstream change moves
# several features at once, BH flags each of them where Bonferroni misses the weaker ones. BH
# holds for independent and positively dependent tests, which covers correlated features.
P_VALUE_ADJUSTMENT = "benjamini-hochberg"
# Chi-squared's p-value is unreliable when a cell expects fewer than 5 counts (Cochran's rule):
# rare categories, and categories one side never saw, are pooled into one bin below that.
MIN_EXPECTED_COUNT = 5.0
OTHER_CATEGORIES = "(other)"
# Added to every category's count on both sides before PSI's logarithm, so an empty bin (a
# category one side never saw) weighs in as a large but finite term.
PSI_PSEUDOCOUNT = 0.5


def _numbers(values: Iterable[Any]) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        return values[np.isfinite(values)]
    out = []
    for value in values:
        if finite_number(value):
            out.append(float(value))
    return np.asarray(out, dtype=float)


def _category(value: Any, *, boolean: bool) -> str | None:
    """One key per category; a boolean feature's reference sample may hold "true"/"false"
    strings where served rows hold JSON booleans, and both mean the same category."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if boolean and isinstance(value, str) and value.strip().lower() in {"true", "false"}:
        return value.strip().lower()
    return str(value)


def _categories(values: Iterable[Any], *, boolean: bool = False) -> Counter[str]:
    return Counter(
        key for value in values if (key := _category(value, boolean=boolean)) is not None
    )


def population_stability_index(
    reference: Mapping[str, float], served: Mapping[str, float]
) -> float:
    """PSI = sum over bins of (s - r) * ln(s / r), r and s each bin's share of the reference
    and served counts after adding PSI_PSEUDOCOUNT to every bin on both sides. Conventional
    reading: < 0.1 no real change, 0.1-0.25 moderate, > 0.25 large."""
    bins = sorted(set(reference) | set(served))
    ref = np.array([reference.get(b, 0) for b in bins], dtype=float) + PSI_PSEUDOCOUNT
    cur = np.array([served.get(b, 0) for b in bins], dtype=float) + PSI_PSEUDOCOUNT
    ref, cur = ref / ref.sum(), cur / cur.sum()
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def _pooled(reference: Counter[str], served: Counter[str]) -> tuple[dict, dict]:
    """The two counts with every category expected to hold fewer than MIN_EXPECTED_COUNT rows
    on either side merged into OTHER_CATEGORIES."""
    ref_total, cur_total = sum(reference.values()), sum(served.values())
    smaller, total = min(ref_total, cur_total), ref_total + cur_total
    ref_out: dict[str, int] = {}
    cur_out: dict[str, int] = {}
    for category in set(reference) | set(served):
        both = reference[category] + served[category]
        key = category if both * smaller / total >= MIN_EXPECTED_COUNT else OTHER_CATEGORIES
        ref_out[key] = ref_out.get(key, 0) + reference[category]
        cur_out[key] = cur_out.get(key, 0) + served[category]
    return ref_out, cur_out


def _ks_entry(name: str, reference: Any, served: Any) -> dict:
    from scipy.stats import ks_2samp

    ref, cur = _numbers(reference), _numbers(served)
    if len(ref) < 2 or len(cur) < 2:
        return _untested(name, "ks", "ks_statistic", "fewer than 2 numeric values on one side")
    result = ks_2samp(ref, cur)
    statistic = float(result.statistic)
    return _tested(name, "ks", statistic, float(result.pvalue), "ks_statistic", statistic)


def _chi2_entry(name: str, reference: Any, served: Any, *, boolean: bool) -> dict:
    from scipy.stats import chi2_contingency

    ref, cur = _categories(reference, boolean=boolean), _categories(served, boolean=boolean)
    if not ref or not cur:
        return _untested(name, "chi2", "psi", "no values on one side")
    ref_bins, cur_bins = _pooled(ref, cur)
    psi = population_stability_index(ref_bins, cur_bins)
    categories = sorted(ref_bins)
    if len(categories) < 2:
        # One bin on both sides: the distributions are identical.
        return _tested(name, "chi2", 0.0, 1.0, "psi", psi)
    table = [[ref_bins[c] for c in categories], [cur_bins[c] for c in categories]]
    statistic, p_value, _, _ = chi2_contingency(table)
    return _tested(name, "chi2", float(statistic), float(p_value), "psi", psi)


def _tested(
    name: str, test: str, statistic: float, p_value: float, measure: str, effect: float
) -> dict:
    return {
        "feature": name,
        "test": test,
        "statistic": statistic,
        "p_value": p_value,
        "p_value_adjusted": None,
        "effect_size_measure": measure,
        "effect_size": effect,
        "min_effect_size": None,
        "drift": False,
    }


def _untested(name: str, test: str, measure: str, reason: str) -> dict:
    return {
        "feature": name,
        "test": test,
        "statistic": None,
        "p_value": None,
        "p_value_adjusted": None,
        "effect_size_measure": measure,
        "effect_size": None,
        "min_effect_size": None,
        "drift": False,
        "note": reason,
    }


def feature_drift(
    *,
    schema: list[dict[str, Any]],
    reference: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    served: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    threshold: float | None = None,
    min_ks_statistic: float | None = None,
    min_psi: float | None = None,
) -> list[dict[str, Any]]:
    """One entry per schema feature, in schema order: `test` ("ks" | "chi2"), `statistic`,
    raw `p_value`, `p_value_adjusted` (Benjamini-Hochberg over the features tested here),
    `effect_size` (the KS statistic, or the PSI of the categories) with its
    `effect_size_measure` and `min_effect_size`, and `drift`: adjusted p-value under
    `threshold` and effect size at least its floor. An untested feature (too few values) has
    null numbers, `drift` false and a `note`.

    `reference` and `served` are lists of feature rows, or mappings of feature name -> values
    (a float numpy array is read as is). The thresholds default to DRIFT_P_VALUE_THRESHOLD,
    DRIFT_MIN_KS_STATISTIC and DRIFT_MIN_PSI.
    """
    from scipy.stats import false_discovery_control

    alpha = settings.DRIFT_P_VALUE_THRESHOLD if threshold is None else threshold
    floors = {
        "ks_statistic": (
            settings.DRIFT_MIN_KS_STATISTIC if min_ks_statistic is None else min_ks_statistic
        ),
        "psi": settings.DRIFT_MIN_PSI if min_psi is None else min_psi,
    }
    entries = []
    for feature in schema:
        name = feature["name"]
        ref_values = _column(reference, name)
        cur_values = _column(served, name)
        kind = feature.get("type", "float")
        if kind in CATEGORICAL_TYPES:
            entry = _chi2_entry(name, ref_values, cur_values, boolean=kind == "boolean")
        else:
            entry = _ks_entry(name, ref_values, cur_values)
        entry["min_effect_size"] = floors[entry["effect_size_measure"]]
        entries.append(entry)
    tested = [e for e in entries if e["p_value"] is not None and math.isfinite(e["p_value"])]
    if tested:
        adjusted = false_discovery_control([e["p_value"] for e in tested], method="bh")
        for entry, p_adjusted in zip(tested, adjusted, strict=True):
            entry["p_value_adjusted"] = float(p_adjusted)
            entry["drift"] = bool(
                p_adjusted < alpha and entry["effect_size"] >= entry["min_effect_size"]
            )
    return entries


def _column(rows: Sequence[Mapping[str, Any]] | Mapping[str, Any], name: str) -> Any:
    if isinstance(rows, Mapping):
        return rows.get(name, [])
    return [row.get(name) for row in rows]


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
        if status == DriftStatus.DRIFT:
            from quality.drift_views import DriftReportOutput  # the views import this module

            event_publish(
                "drift.detected", model=version.model.name, data=DriftReportOutput(report).data
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
    # Rows still buffered in this process count too.
    prediction_log_flush()
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
    *,
    older_than: datetime,
    batch_size: int = 1000,
    dry_run: bool = False,
    actor: Actor = "job:retention",
) -> int:
    """Deletes drift reports written before `older_than`, in batches audited as `actor`,
    except each version's newest report and newest tested one (what the admin and /metrics
    show); returns how many went (with `dry_run`, how many would, deleting nothing)."""
    keep = _newest_report_ids(DriftReport.objects.all())
    keep |= _newest_report_ids(DriftReport.objects.filter(status__in=TESTED_STATUSES))
    expired = DriftReport.objects.filter(created_at__lt=older_than).exclude(id__in=keep)
    if dry_run:
        return expired.count()
    return delete_in_batches(expired, batch_size=batch_size, audit=prune_auditor(actor))


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
