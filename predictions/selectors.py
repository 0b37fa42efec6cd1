"""Reads of the serving path: the cached routing entry, traffic splits, online accuracy."""

from __future__ import annotations

import math
import re
import secrets
import threading
import time
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.db.models import Count, F, Q, QuerySet

from config.errors import NotFoundError
from mlregistry.models import (
    MODEL_ID_PATTERN,
    ModelAlias,
    ModelVersion,
    RegisteredModel,
    Stage,
    Task,
)
from mlregistry.selectors import (
    NUMERIC_NAMES_CACHE_KEY,
    predict_alias_cache_key,
    routing_cache_key,
    routing_generation_key,
)
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
    # Aliases never point to archived versions (archiving removes them), so every target is
    # in `versions`; `latest` is the highest version that is not archived.
    aliases = dict(
        ModelAlias.objects.filter(model=model, version_id__in=versions).values_list(
            "alias", "version_id"
        )
    )
    latest = max(versions, key=lambda vid: versions[vid]["version"], default=None)
    return {
        "model_id": model.pk,
        "name": model.name,
        "task": model.task,
        "production": production,
        "split": split,
        "versions": versions,
        "by_number": {v["version"]: vid for vid, v in versions.items()},
        "aliases": aliases,
        "latest": latest,
    }


def _routing_ttl() -> float:
    # A local-memory cache can't be invalidated from another process (a Celery job, another
    # gunicorn worker): a short TTL bounds how long such a process serves the old version.
    if cache_is_process_local():
        return settings.PREDICTION_ROUTING_LOCAL_TTL
    return settings.PREDICTION_ROUTING_TTL


def _generation_start(key: str) -> str:
    """The current generation token, creating one when there is none (first use, eviction)."""
    token = secrets.token_hex(8)
    try:
        caches["default"].add(key, token, None)
        return caches["default"].get(key) or token
    except Exception:
        # The entry is then stamped with a token nobody else holds: the next request rebuilds.
        return token


def routing_entry_get(*, name: str) -> dict[str, Any]:
    """The routing entry of a model (cache first, database on a miss); NotFoundError if none.

    A cached entry is served only while its `generation` equals the model's generation token
    (mlregistry.selectors.routing_generation_key), which every committed stage, split or alias
    change replaces. The token is read before the database, so an entry built from a read that
    such a change overtook carries the old token and no later request serves it."""
    key = routing_cache_key(name)
    generation_key = routing_generation_key(name)
    generation = cache_get(generation_key)
    entry = cache_get(key)
    if entry is not None and (
        not cache_available() or (generation is not None and entry.get("generation") == generation)
    ):
        return entry
    if not cache_available():
        now = time.monotonic()
        cached = _fallback.get(name)
        if cached is not None and cached[0] > now:
            return cached[1]
    if generation is None and cache_available():
        generation = _generation_start(generation_key)
    entry = routing_entry_from_db(name=name)
    if entry is None:
        raise NotFoundError(f"No registered model named {name!r}.")
    if not cache_available():
        with _fallback_lock:
            _fallback[name] = (time.monotonic() + settings.PREDICTION_ROUTING_LOCAL_TTL, entry)
        return entry
    entry["generation"] = generation
    cache_set(key, entry, _routing_ttl())
    return entry


# A model name as the URL's <slug:...> converter reads it (ASCII, as SlugField validates).
_SLUG = re.compile(r"[-a-zA-Z0-9_]{1,100}")
# A BigAutoField id has at most 19 digits; longer strings are no id (and int() of thousands of
# digits raises).
_ID_MAX_DIGITS = 19
_ALIAS_TTL = 300


def predict_alias_resolve(*, model_id: str) -> str:
    """The name of the model the seeds' /predict/{model_id} addresses, or NotFoundError (404).

    The rule, in order: (1) a string that is not made only of ASCII digits is a model name
    (looked up as such later; a string that cannot be one, with signs, spaces, dots or non-ASCII
    digits such as '١٦', is a 404 here); (2) a string of ASCII digits that is exactly the name of
    a model wins (only models registered before such names were refused, see
    mlregistry.models.validate_not_an_id); (3) otherwise it is a database id, read like Django's
    <int:...> converter (leading zeros allowed). Both lookups are cached, and dropped on commit
    of the model's delete or rename (mlregistry.selectors.registered_model_caches_invalidate)."""
    if not MODEL_ID_PATTERN.fullmatch(model_id):
        if not _SLUG.fullmatch(model_id):
            raise NotFoundError(f"No registered model named {model_id!r}.")
        return model_id
    numeric_names = cache_get(NUMERIC_NAMES_CACHE_KEY)
    if numeric_names is None:
        numeric_names = frozenset(
            RegisteredModel.objects.filter(name__regex=r"^[0-9]+$").values_list("name", flat=True)
        )
        cache_set(NUMERIC_NAMES_CACHE_KEY, numeric_names, _ALIAS_TTL)
    if model_id in numeric_names:
        return model_id
    if len(model_id.lstrip("0")) > _ID_MAX_DIGITS:
        raise NotFoundError(f"No registered model with id {model_id}.")
    pk = int(model_id)
    key = predict_alias_cache_key(pk)
    name = cache_get(key)
    if name is None:
        name = RegisteredModel.objects.filter(pk=pk).values_list("name", flat=True).first()
        if name is None:
            raise NotFoundError(f"No registered model with id {model_id}.")
        cache_set(key, name, _ALIAS_TTL)
    return name


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
        # A boolean is no number here either (feedback refuses one now; older rows may hold it).
        errors = [
            abs(float(out) - float(act))
            for out, act in pairs
            if type(out) in (int, float)
            and type(act) in (int, float)
            and math.isfinite(out)
            and math.isfinite(act)
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
