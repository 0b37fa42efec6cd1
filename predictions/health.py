"""Readiness checks of the serving path, registered into config.health.

Readiness answers "can this process serve predictions?": it never loads a model (a probe that
did would reload every production model each time when they outnumber the model cache, and one
broken model would take the whole process out of rotation). It reports each production
version's state in this process: `loaded`, `not_loaded` (it loads on its first request) or
`failed` (its last load here failed; other models still serve). The deep check (/health/deep,
for operators) loads and verifies every production version.
"""

from __future__ import annotations

from typing import Any

from django.db import DatabaseError

from mlregistry.models import ModelVersion, Stage
from predictions.cache import cache_available
from predictions.loader import model_cache
from predictions.serving import version_info


def _production_versions() -> list[ModelVersion]:
    return list(
        ModelVersion.objects.filter(stage=Stage.PRODUCTION)
        .select_related("model")
        .order_by("model__name")
    )


def check_production_models() -> tuple[str, Any]:
    """Each production version's state in this process, without loading any.

    `down` (readiness 503) only when this process cannot serve at all: the database is
    unreachable and no model is loaded here to serve from. A failed model is `degraded`.
    """
    try:
        versions = _production_versions()
    except DatabaseError as exc:
        if len(model_cache):
            return "degraded", {
                "reason": "database unavailable: serving the models loaded in this process",
                "loaded": len(model_cache),
            }
        return "down", f"database unavailable and no model loaded: {type(exc).__name__}"
    models: dict[str, Any] = {}
    failed = 0
    for version in versions:
        key = (version.pk, version.artifact_sha256)
        entry: dict[str, Any] = {"version": version.version}
        if model_cache.peek(*key) is not None:
            entry["state"] = "loaded"
        elif key in model_cache.failures:
            entry["state"] = "failed"
            entry["detail"] = model_cache.failures[key]
            failed += 1
        else:
            entry["state"] = "not_loaded"
        models[version.model.name] = entry
    return ("degraded" if failed else "ok"), {"production": models}


def check_production_models_deep() -> tuple[str, Any]:
    """Loads (or finds loaded) and verifies every production version: `down` if any fails."""
    models: dict[str, Any] = {}
    failed = 0
    for version in _production_versions():
        try:
            model_cache.get(version_info(version), model_name=version.model.name)
            models[version.model.name] = {"version": version.version, "state": "loaded"}
        except Exception as exc:
            failed += 1
            models[version.model.name] = {
                "version": version.version,
                "state": "failed",
                "detail": f"{type(exc).__name__}: {exc}",
            }
    return ("down" if failed else "ok"), {"production": models}


def check_prediction_cache() -> tuple[str, Any]:
    """The serving path's view of the cache: degraded while it is skipping a failing cache."""
    if cache_available():
        return "ok", None
    return "degraded", "recent cache errors: predictions are answered uncached"


def register(checks: dict, deep_checks: dict | None = None) -> None:
    checks["models"] = check_production_models
    checks["prediction_cache"] = check_prediction_cache
    if deep_checks is not None:
        deep_checks["models"] = check_production_models_deep
