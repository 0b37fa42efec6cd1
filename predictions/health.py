"""Readiness checks of the serving path, registered into config.health.READINESS_CHECKS."""

from __future__ import annotations

from typing import Any

from mlregistry.models import ModelVersion, Stage
from predictions.cache import cache_available
from predictions.loader import model_cache
from predictions.selectors import version_routing_info


def check_production_models() -> tuple[str, Any]:
    """Every production version loads (from this process's LRU, or read and verified now)."""
    failed = []
    versions = ModelVersion.objects.filter(stage=Stage.PRODUCTION).select_related("model")
    for version in versions:
        try:
            model_cache.get(version_routing_info(version), model_name=version.model.name)
        except Exception as exc:
            failed.append(f"{version}: {type(exc).__name__}")
    if failed:
        return "down", failed
    return "ok", {"production_versions": len(versions)}


def check_prediction_cache() -> tuple[str, Any]:
    """The serving path's view of the cache: degraded while it is skipping a failing cache."""
    if cache_available():
        return "ok", None
    return "degraded", "recent cache errors: predictions are answered uncached"


def register(checks: dict) -> None:
    checks["models"] = check_production_models
    checks["prediction_cache"] = check_prediction_cache
