"""Checks request rows against a version's input schema, naming every offending field."""

from __future__ import annotations

import math
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np
from django.conf import settings

from config.errors import PayloadTooLarge, ValidationFailed
from config.numbers import finite_number
from predictions.loader import Feature

_NUMBER_TYPES = frozenset({float, int})


# A batch of bad rows would otherwise produce an error body as large as the request.
MAX_REPORTED_FIELDS = 100


def _check_value(feature: Feature, value: Any) -> tuple[Any, str | None]:
    """(value to feed the model, error message or None)."""
    if value is None:
        if feature.required:
            return None, "must not be null"
        return (math.nan if feature.type != "string" else None), None
    kind = type(value)
    if feature.type == "float":
        if kind is not float and kind is not int:
            return None, "must be a number"
        if not finite_number(value):
            return None, "must be a finite number (not NaN or Infinity)"
    elif feature.type == "integer":
        if kind is float:
            if not finite_number(value):
                return None, "must be a finite number (not NaN or Infinity)"
            if not value.is_integer():
                return None, "must be an integer"
        elif kind is not int:
            return None, "must be an integer"
        elif not finite_number(value):
            return None, "must be a finite number (not NaN or Infinity)"
    elif feature.type == "boolean":
        if kind is not bool:
            return None, "must be true or false"
        return value, None
    elif feature.type == "string":
        if kind is not str:
            return None, "must be a string"
        return value, None
    if value < feature.low or value > feature.high:
        if feature.high == math.inf:
            return None, f"must be at least {feature.low:g}"
        if feature.low == -math.inf:
            return None, f"must be at most {feature.high:g}"
        return None, f"must be between {feature.low:g} and {feature.high:g}"
    return value, None


def row_errors(
    row: Any, features: tuple[Feature, ...], names: frozenset[str], prefix: str
) -> tuple[list[Any], dict[str, list[str]]]:
    """One row ({feature: value}) against `features`: (its values in schema order, {field:
    [reasons]}), fields named `prefix` + feature name. The predict API's and the batch jobs'
    messages come from here, so both name the same reasons."""
    errors: dict[str, list[str]] = {}
    if not isinstance(row, dict):
        errors[prefix.rstrip(".") or "features"] = ["must be an object of feature values"]
        return [], errors
    values: list[Any] = []
    present = 0
    for feature in features:
        if feature.name in row:
            present += 1
        else:
            if feature.required:
                errors[prefix + feature.name] = ["required feature is missing"]
            else:
                values.append(math.nan if feature.type != "string" else None)
            continue
        value, error = _check_value(feature, row[feature.name])
        if error is not None:
            errors[prefix + feature.name] = [error]
        values.append(value)
    if len(row) > present:
        for name in row:
            if name not in names:
                errors[prefix + str(name)] = ["unknown feature"]
    return values, errors


def payload_rows(payload: Any) -> tuple[list[Any], bool]:
    """(rows, batch) of a native predict body (`{"features": {...}}` or `{"instances":
    [...]}`); ValidationFailed (400) or PayloadTooLarge (413, past PREDICTION_MAX_BATCH_ROWS)
    naming the field."""
    if not isinstance(payload, dict):
        raise ValidationFailed(
            "The body must be a JSON object with `features` or `instances`.",
            fields={"non_field_errors": ["expected a JSON object"]},
        )
    if "instances" in payload and "features" in payload:
        raise ValidationFailed(
            "The body has both `features` and `instances`: send one row or a batch.",
            fields={"features": ["give features or instances, not both"]},
        )
    if "instances" in payload:
        rows = payload["instances"]
        if not isinstance(rows, list) or not rows:
            raise ValidationFailed(
                "`instances` must be a non-empty list of feature objects.",
                fields={"instances": ["must be a non-empty list of objects"]},
            )
        limit = settings.PREDICTION_MAX_BATCH_ROWS
        if len(rows) > limit:
            raise PayloadTooLarge(
                f"A batch may hold at most {limit} rows (PREDICTION_MAX_BATCH_ROWS); "
                f"this one has {len(rows)}.",
                fields={"instances": [f"at most {limit} rows"]},
            )
        return rows, True
    if "features" in payload:
        return [payload["features"]], False
    raise ValidationFailed(
        "The body needs `features` (one row) or `instances` (a batch).",
        fields={"features": ["required (or instances)"]},
    )


def in_range(bounds: Any, matrix: np.ndarray) -> bool:
    """Whether every value of a float matrix (rows in schema order) is finite and within the
    schema's bounds (`bounds.lows`, `bounds.highs`: one float per feature, infinite when
    unbounded), as validation would find it. A side with no finite bound (`bounds.bounded_low`,
    `bounds.bounded_high`, precomputed at load) is not compared: on a batch's matrix those
    comparisons were most of the check's time."""
    return bool(
        np.isfinite(matrix).all()
        and not (bounds.bounded_low and (matrix < bounds.lows).any())
        and not (bounds.bounded_high and (matrix > bounds.highs).any())
    )


def fast_numeric_rows(
    rows: list[Any], features: tuple[Feature, ...], lows: Any, highs: Any
) -> Any | None:
    """The rows as a float64 matrix when every row is plainly valid, else None.

    For schemas of required float features only. Checks done in C where possible (itemgetter,
    numpy); any doubt returns None and the row-by-row check names the offending fields.
    """
    getter = itemgetter(*(f.name for f in features))
    width = len(features)
    try:
        # With every name present, a row of another length has unknown keys.
        if any(len(row) != width for row in rows):
            return None
        picked = list(map(getter, rows))
        # bool is not int here: type() is exact, so true/false fall back to the full check.
        flat = chain.from_iterable(picked) if width > 1 else picked
        if not _NUMBER_TYPES.issuperset(map(type, flat)):
            return None
        matrix = np.array(picked, dtype=np.float64)
    except (KeyError, TypeError, OverflowError, ValueError):
        return None
    if matrix.ndim == 1:  # a one-feature schema: itemgetter gives scalars
        matrix = matrix.reshape(-1, 1)
    if not np.isfinite(matrix).all() or (matrix < lows).any() or (matrix > highs).any():
        return None
    return matrix


def rows_validate(
    rows: list[Any], features: tuple[Feature, ...], names: frozenset[str], *, batch: bool
) -> list[list[Any]]:
    """Rows as lists of values in schema order, or ValidationFailed listing every bad field
    (keys `feature` for one row, `instances[i].feature` for a batch)."""
    out: list[list[Any]] = []
    errors: dict[str, list[str]] = {}
    for index, row in enumerate(rows):
        prefix = f"instances[{index}]." if batch else ""
        values, found = row_errors(row, features, names, prefix)
        if found:
            for key, messages in found.items():
                if len(errors) < MAX_REPORTED_FIELDS:
                    errors[key] = messages
            continue
        out.append(values)
    if errors:
        count = len(errors)
        shown = list(errors)[:5]
        raise ValidationFailed(
            f"{count} invalid field{'s' if count != 1 else ''}: {', '.join(shown)}"
            + (" …" if count > len(shown) else ""),
            fields=errors,
        )
    return out


# --- Feedback: the true outcome against what the version can answer ---------------------


def _same_class(value: Any, label: Any) -> bool:
    """The typing rules of input features: an equal number is the same class (1.0 is class 1),
    a boolean is not a number (true is not class 1), a string matches only itself."""
    value_type, label_type = type(value), type(label)
    if value_type is bool or label_type is bool:
        return value_type is label_type and value == label
    if label_type in _NUMBER_TYPES:
        return value_type in _NUMBER_TYPES and finite_number(value) and value == label
    return value_type is label_type and value == label


def actual_refusal(actual: Any, *, classes: list[Any] | None, regression: bool) -> str | None:
    """Why `actual` cannot be the outcome of a prediction of this version, or None if it can.

    A regressor's outcome is a finite number (not a boolean); a classifier's is one of its
    classes under _same_class; a classifier that recorded no classes takes a string, a
    boolean or a finite number."""
    if regression:
        if type(actual) not in _NUMBER_TYPES or not finite_number(actual):
            return "must be a finite number"
        return None
    if classes is not None:
        if not any(_same_class(actual, label) for label in classes):
            return f"must be one of the model's classes {classes}"
        return None
    if type(actual) in _NUMBER_TYPES and not finite_number(actual):
        return "must be a finite number"
    if type(actual) not in (*_NUMBER_TYPES, bool, str):
        return "must be a class label (a string, a number or a boolean)"
    return None


def actual_validate(actual: Any, *, classes: list[Any] | None, regression: bool) -> Any:
    """The outcome to store for `actual`: the version's own class label when it names one (so
    1.0 is stored as the class 1 it equals, and accuracy compares like with like), else
    `actual`. ValidationFailed (400, field `actual`, listing the allowed classes) when
    actual_refusal refuses it."""
    why = actual_refusal(actual, classes=classes, regression=regression)
    if why is not None:
        kind = "regression model" if regression else "model"
        raise ValidationFailed(f"actual {why} for this {kind}.", fields={"actual": [why]})
    if classes is not None and not regression:
        return next(label for label in classes if _same_class(actual, label))
    return actual
