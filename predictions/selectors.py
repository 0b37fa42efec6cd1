"""Reads of the serving path: the cached routing entry, traffic splits, online accuracy."""

from __future__ import annotations

import threading
import time
from typing import Any

from django.conf import settings
from django.db.models import Count, F, Q, QuerySet

from config.errors import NotFoundError
from mlregistry.models import ModelVersion, RegisteredModel, Stage, Task
from mlregistry.selectors import routing_cache_key
from predictions.cache import cache_available, cache_get, cache_is_process_local, cache_set
from predictions.models import PredictionLog, TrafficSplit

# Used only while the shared cache is failing, so a Redis outage doesn't turn into one database
# query per request; entries live PREDICTION_ROUTING_LOCAL_TTL seconds.
_fallback: dict[str, tuple[float, dict[str, Any]]] = {}
_fallback_lock = threading.Lock()


def version_routing_info(version: ModelVersion) -> dict[str, Any]:
    """What the predict path needs about one version, as plain data that can be cached."""
    return {
        "id": version.pk,
        "version": version.version,
        "stage": version.stage,
        "sha256": version.artifact_sha256,
        "artifact": version.artifact.name,
        "format": version.artifact_format,
        "schema": version.input_schema,
    }


def routing_entry_from_db(*, name: str) -> dict[str, Any] | None:
    """Builds a model's routing entry from the database; None when there is no such model."""
    model = RegisteredModel.objects.filter(name=name).only("id", "name", "task").first()
    if model is None:
        return None
    versions = {
        v.pk: version_routing_info(v)
        for v in ModelVersion.objects.filter(model=model).exclude(stage=Stage.ARCHIVED)
    }
    production = next((vid for vid, v in versions.items() if v["stage"] == Stage.PRODUCTION), None)
    split = [
        [row.version_id, row.weight]
        for row in TrafficSplit.objects.filter(model=model).order_by("version__version")
        if row.version_id in versions and row.weight > 0
    ]
    return {
        "model_id": model.pk,
        "name": model.name,
        "task": model.task,
        "production": production,
        "split": split,
        "versions": versions,
        "by_number": {v["version"]: vid for vid, v in versions.items()},
    }


def _routing_ttl() -> float:
    # A local-memory cache can't be invalidated from another process (a Celery job, another
    # gunicorn worker): a short TTL bounds how long such a process serves the old version.
    if cache_is_process_local():
        return settings.PREDICTION_ROUTING_LOCAL_TTL
    return settings.PREDICTION_ROUTING_TTL


def routing_entry_get(*, name: str) -> dict[str, Any]:
    """The routing entry of a model (cache first, database on a miss); NotFoundError if none."""
    key = routing_cache_key(name)
    entry = cache_get(key)
    if entry is not None:
        return entry
    if not cache_available():
        now = time.monotonic()
        cached = _fallback.get(name)
        if cached is not None and cached[0] > now:
            return cached[1]
    entry = routing_entry_from_db(name=name)
    if entry is None:
        raise NotFoundError(f"No registered model named {name!r}.")
    if not cache_available():
        with _fallback_lock:
            _fallback[name] = (time.monotonic() + settings.PREDICTION_ROUTING_LOCAL_TTL, entry)
        return entry
    # A stage change that commits between our read and our write has already run its
    # invalidation, so our write would park the old routing in the cache. Reading again after
    # writing closes that window: any such change is visible to the second read.
    for _ in range(3):
        cache_set(key, entry, _routing_ttl())
        again = routing_entry_from_db(name=name)
        if again == entry:
            break
        if again is None:
            raise NotFoundError(f"No registered model named {name!r}.")
        entry = again
    return entry


def routing_fallback_clear() -> None:
    with _fallback_lock:
        _fallback.clear()


def traffic_split_list(*, model: RegisteredModel) -> QuerySet[TrafficSplit]:
    return (
        TrafficSplit.objects.filter(model=model)
        .select_related("version")
        .order_by("version__version")
    )


def online_metrics_get(*, version: ModelVersion) -> dict[str, Any]:
    """Per-version quality from feedback: accuracy (classifiers) or MAE (regressors)."""
    rows = PredictionLog.objects.filter(version=version, feedback_at__isnull=False)
    if version.model.task == Task.REGRESSION:
        pairs = rows.values_list("output", "actual").order_by("-feedback_at")[:10_000]
        errors = [
            abs(float(out) - float(act))
            for out, act in pairs
            if isinstance(out, int | float) and isinstance(act, int | float)
        ]
        return {
            "feedback_count": rows.count(),
            "mae": (sum(errors) / len(errors)) if errors else None,
        }
    counts = rows.aggregate(total=Count("id"), correct=Count("id", filter=Q(output=F("actual"))))
    total = counts["total"]
    return {
        "feedback_count": total,
        "accuracy": (counts["correct"] / total) if total else None,
    }
