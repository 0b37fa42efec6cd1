"""Reference samples of training features, kept per version for drift checks."""

from __future__ import annotations

import math
import random
from typing import Any

from django.conf import settings

from config.errors import ValidationFailed
from config.numbers import finite_number


def prepare_reference_sample(
    sample: Any, features: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]] | None, dict[str, Any] | None]:
    """Checks rows against the schema, samples them down to REFERENCE_SAMPLE_MAX_ROWS and
    returns (rows, per-feature summary statistics)."""
    if sample is None:
        return None, None
    if not isinstance(sample, list) or not sample or not all(isinstance(r, dict) for r in sample):
        raise ValidationFailed(
            "reference_sample must be a non-empty list of feature objects.",
            fields={"reference_sample": ["must be a non-empty JSON list of objects"]},
        )
    names = [f["name"] for f in features]
    errors: dict[str, list[str]] = {}
    for index, row in enumerate(sample):
        missing = [n for n in names if n not in row]
        if missing:
            errors[f"reference_sample[{index}]"] = [f"missing features: {', '.join(missing[:10])}"]
        for name in names:
            value = row.get(name)
            # JSON integers have no length limit; one past float range is no feature value.
            if isinstance(value, int) and not isinstance(value, bool) and not finite_number(value):
                errors[f"reference_sample[{index}].{name}"] = ["is a number past float range"]
        if len(errors) >= 10:
            break
    if errors:
        raise ValidationFailed(
            "reference_sample rows do not match the input schema.", fields=errors
        )
    limit = settings.REFERENCE_SAMPLE_MAX_ROWS
    rows = [{n: row[n] for n in names} for row in sample]
    if len(rows) > limit:
        rows = random.Random(0).sample(rows, limit)  # noqa: S311 - reproducible, not security
    return rows, summary_stats(rows, features)


def summary_stats(rows: list[dict[str, Any]], features: list[dict[str, Any]]) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    for feature in features:
        name = feature["name"]
        values = [float(r[name]) for r in rows if finite_number(r.get(name))]
        if not values:
            stats[name] = {"count": 0}
            continue
        values.sort()
        count = len(values)
        mean = sum(values) / count
        variance = sum((v - mean) ** 2 for v in values) / count
        stats[name] = {
            "count": count,
            "mean": mean,
            "std": math.sqrt(variance),
            "min": values[0],
            "p50": values[count // 2],
            "max": values[-1],
        }
    return stats


def model_version_reference_attach(*, version: Any, reference_sample: Any, actor: Any) -> Any:
    """Sets (or replaces) a version's reference sample and statistics after registration, e.g.
    from the admin; the rows are checked and bounded exactly as at upload."""
    from django.db import transaction

    sample, stats = prepare_reference_sample(reference_sample, version.input_schema or [])
    with transaction.atomic():
        version.reference_sample = sample
        version.reference_stats = stats
        version.metadata = {
            **(version.metadata or {}),
            "reference_attached_by": actor if isinstance(actor, str) else actor.get_username(),
        }
        version.save(
            update_fields=["reference_sample", "reference_stats", "metadata", "updated_at"]
        )
    return version
