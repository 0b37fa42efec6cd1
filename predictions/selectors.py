"""Reads of the predictions app: the seeds' predict alias, traffic splits, online accuracy
(the routing entry is predictions.serving's)."""

from __future__ import annotations

import math
import re
from typing import Any

from django.db.models import Count, F, Q, QuerySet

from config.errors import NotFoundError
from mlregistry.models import MODEL_ID_PATTERN, ModelVersion, RegisteredModel, Task
from mlregistry.selectors import (
    NUMERIC_NAMES_CACHE_KEY,
    predict_alias_cache_key,
)
from predictions.cache import cache_get, cache_set
from predictions.models import PredictionLog, TrafficSplit

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
    if not isinstance(numeric_names, frozenset):
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
    if not isinstance(name, str):
        name = RegisteredModel.objects.filter(pk=pk).values_list("name", flat=True).first()
        if name is None:
            raise NotFoundError(f"No registered model with id {model_id}.")
        cache_set(key, name, _ALIAS_TTL)
    return name


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
