"""Input schemas: an ordered list of features, each {name, type, min, max, required}.

The registry checks a schema when a version is registered (supplied as JSON or inferred from
the estimator); the predictions app validates request features against it.
"""

from __future__ import annotations

import re
from typing import Any

from config.errors import ValidationFailed
from config.numbers import finite_number

FEATURE_TYPES = ("float", "integer", "boolean", "string")
_NAME = re.compile(r"^[^\x00-\x1f]{1,200}$")


class SchemaError(ValidationFailed):
    error_type = "schema_error"


def _number_or_none(value: Any, where: str, errors: dict[str, list[str]]) -> float | None:
    if value is None:
        return None
    if not finite_number(value):
        errors.setdefault(where, []).append("must be a finite number or null")
        return None
    return value


def normalize_schema(raw: Any) -> list[dict[str, Any]]:
    """Checks a supplied schema and returns it in canonical form, or raises SchemaError."""
    if isinstance(raw, dict) and "features" in raw:
        raw = raw["features"]
    if not isinstance(raw, list) or not raw:
        raise SchemaError(
            "input_schema must be a non-empty list of features.",
            fields={"input_schema": ["must be a non-empty list of {name, type, ...} objects"]},
        )
    errors: dict[str, list[str]] = {}
    seen: set[str] = set()
    features: list[dict[str, Any]] = []
    for index, item in enumerate(raw):
        where = f"input_schema[{index}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            errors.setdefault(where, []).append("must be an object with at least a name")
            continue
        unknown = set(item) - {"name", "type", "min", "max", "required", "description"}
        if unknown:
            errors.setdefault(where, []).append(f"unknown keys: {', '.join(sorted(unknown))}")
        name = item.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            errors.setdefault(where, []).append("name must be a non-empty string")
            continue
        if name in seen:
            errors.setdefault(where, []).append(f"duplicate feature name {name!r}")
        seen.add(name)
        ftype = item.get("type", "float")
        if ftype not in FEATURE_TYPES:
            errors.setdefault(where, []).append(f"type must be one of {', '.join(FEATURE_TYPES)}")
        low = _number_or_none(item.get("min"), f"{where}.min", errors)
        high = _number_or_none(item.get("max"), f"{where}.max", errors)
        if low is not None and high is not None and low > high:
            errors.setdefault(where, []).append("min must not be greater than max")
        required = item.get("required", True)
        if not isinstance(required, bool):
            errors.setdefault(where, []).append("required must be true or false")
        feature: dict[str, Any] = {"name": name, "type": ftype, "required": required}
        if low is not None:
            feature["min"] = low
        if high is not None:
            feature["max"] = high
        if item.get("description"):
            feature["description"] = str(item["description"])[:500]
        features.append(feature)
    if errors:
        raise SchemaError("input_schema is invalid.", fields=errors)
    return features


def infer_schema(estimator: Any) -> list[dict[str, Any]] | None:
    """Features from the fitted estimator: feature_names_in_ if it has them, else n_features_in_."""
    names = getattr(estimator, "feature_names_in_", None)
    if names is not None:
        return [{"name": str(n), "type": "float", "required": True} for n in names]
    count = getattr(estimator, "n_features_in_", None)
    if isinstance(count, int) and count > 0:
        return [{"name": f"x{i}", "type": "float", "required": True} for i in range(count)]
    return None


def check_schema_matches(schema: list[dict[str, Any]], estimator: Any) -> None:
    """A supplied schema must agree with what the estimator was fitted on."""
    count = getattr(estimator, "n_features_in_", None)
    if isinstance(count, int) and count != len(schema):
        raise SchemaError(
            f"input_schema lists {len(schema)} features but the model was fitted on {count}.",
            fields={"input_schema": [f"expected {count} features, got {len(schema)}"]},
        )
    names = getattr(estimator, "feature_names_in_", None)
    if names is not None and [str(n) for n in names] != [f["name"] for f in schema]:
        raise SchemaError(
            "input_schema feature names differ from the model's feature_names_in_.",
            fields={"input_schema": [f"expected names in order: {', '.join(map(str, names))}"]},
        )
