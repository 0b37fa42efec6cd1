"""Serving predictions, and every write of the predictions app (traffic splits, feedback,
the prediction log). Views, the admin and the jobs call these."""

from __future__ import annotations

import hashlib
import logging
import math
import random
import re
import time
from datetime import UTC, datetime
from functools import partial
from typing import Any

import numpy as np
import orjson
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from rest_framework.exceptions import ParseError

from config.errors import (
    ConflictError,
    DomainError,
    ForbiddenError,
    NotFoundError,
    PayloadTooLarge,
    ValidationFailed,
)
from config.pruning import delete_in_batches
from mlregistry.access import model_access_check
from mlregistry.aliases import LATEST
from mlregistry.audit import audit_record
from mlregistry.models import ModelVersion, RegisteredModel, Stage, Task
from mlregistry.selectors import VERSION_NUMBER_MAX, model_version_get, routing_invalidate
from mlregistry.services import Actor, registered_model_lock
from predictions import metrics
from predictions.alias_routing import alias_version_info
from predictions.body import PredictBody
from predictions.cache import cache_get, cache_set_later
from predictions.loader import LoadedModel, model_cache
from predictions.logbuffer import LogRow, prediction_log_buffer
from predictions.models import PredictionLog, TrafficSplit
from predictions.selectors import routing_entry_get, version_routing_info
from predictions.validation import actual_validate, fast_numeric_rows, rows_validate

logger = logging.getLogger(__name__)


# --- Serving ------------------------------------------------------------------------------


def _pick_weighted(split: list[list[int]], client_id: str | None, model_name: str) -> int:
    if client_id:
        # Sticky: the same client key always lands in the same bucket of this model.
        digest = hashlib.blake2b(f"{model_name}\x00{client_id}".encode(), digest_size=8).digest()
        bucket = int.from_bytes(digest, "big") % 100
    else:
        bucket = random.randrange(100)  # noqa: S311 - traffic sampling, not security
    total = 0
    for version_id, weight in split:
        total += weight
        if bucket < total:
            return version_id
    return split[-1][0]


def _route(
    entry: dict[str, Any],
    *,
    user: Any,
    version_number: int | None,
    client_id: str | None,
    alias: str | None = None,
) -> dict[str, Any]:
    """The version info a request is answered by (alias, pinned, split, or production)."""
    if alias is not None:
        return alias_version_info(entry, alias)
    if version_number is not None:
        version_id = entry["by_number"].get(version_number)
        if version_id is not None:
            return entry["versions"][version_id]
        # Not in the entry: archived, absent, or newer than the entry (an invalidation another
        # process's local cache could not see). Staff may still query archived versions.
        version = model_version_get(name=entry["name"], version=version_number)
        if version.stage == Stage.ARCHIVED and not getattr(user, "is_staff", False):
            raise ForbiddenError(
                f"{entry['name']} v{version_number} is archived; only staff may query it."
            )
        return version_routing_info(version)
    if entry["split"]:
        return entry["versions"][_pick_weighted(entry["split"], client_id, entry["name"])]
    if entry["production"] is None:
        raise ConflictError(
            f"Model {entry['name']!r} has no production version: promote one, or call "
            f"/models/{entry['name']}/versions/<n>/predict to pin a version."
        )
    return entry["versions"][entry["production"]]


def _client_id_in(payload: Any) -> Any:
    return payload.get("client_id") if isinstance(payload, dict) else None


def _rows_from_payload(payload: Any) -> tuple[list[Any], bool]:
    if not isinstance(payload, dict):
        raise ValidationFailed(
            "The body must be a JSON object with `features` or `instances`.",
            fields={"non_field_errors": ["expected a JSON object"]},
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


class ModelOutputInvalid(DomainError):
    """The model answered NaN or infinity for some rows (422): nothing of the request is
    served, cached, logged or observed by a metric."""

    status_code = 422
    error_type = "model_output_invalid"

    def __init__(self, message: str, *, rows: list[int], fields: dict[str, list[str]]):
        super().__init__(message, fields=fields)
        self.rows = rows


# Rows named in a model_output_invalid error, at most (as for validation errors).
_REPORTED_ROWS = 100


def _non_finite_rows(predictions: Any, probabilities: Any) -> list[int]:
    """Indexes of the rows whose prediction, or any of whose probabilities, is not finite."""
    values = np.asarray(predictions)
    kind = values.dtype.kind
    # On the hot path: one sum per array settles the usual all-finite answer. A sum of finite
    # values can overflow, so a non-finite sum only means the rows are checked one by one.
    if not (
        (kind == "f" and not math.isfinite(values.sum()))
        or kind == "O"
        or (probabilities is not None and not math.isfinite(probabilities.sum()))
    ):
        return []
    bad = None
    if kind == "f":
        bad = ~np.isfinite(values)
        if bad.ndim > 1:  # several outputs per row
            bad = bad.reshape(len(bad), -1).any(axis=1)
    elif kind == "O":  # mixed labels: only a float can be NaN or infinite
        bad = np.array([isinstance(v, float) and not math.isfinite(v) for v in values.reshape(-1)])
    if probabilities is not None:
        unfit = ~np.isfinite(probabilities).all(axis=1)
        bad = unfit if bad is None else bad | unfit
    if bad is None or not bad.any():
        return []
    return np.flatnonzero(bad).tolist()


def _refuse_non_finite(
    rows: list[int], *, probabilities: Any, batch: bool, refused_inside: bool = False
) -> None:
    """ModelOutputInvalid naming `rows` (those without a finite answer), if any: JSON has no
    such numbers (they would go out as null) and one would poison a metric's sum.
    refused_inside: a pipeline step met NaN or infinity (an overflow, or a missing value the
    model cannot take) and scikit-learn refused to go on."""
    if not rows:
        return
    what = "prediction or probabilities" if probabilities is not None else "prediction"
    why = f"the model's {what} is not a finite number (NaN or infinity)"
    if refused_inside:
        why = "the model could not compute an answer: one of its steps met NaN or infinity"
    shown = rows[:_REPORTED_ROWS]
    if batch:
        fields = {f"instances[{i}]": [why] for i in shown}
        listed = ", ".join(map(str, shown[:10])) + (" …" if len(rows) > 10 else "")
        message = (
            f"The model gave no valid answer for {len(rows)} of the rows ({listed}): {why}. "
            "Nothing was served; such inputs are usually far outside the training data (or "
            "missing values the model cannot take)."
        )
    else:
        fields = {"features": [why]}
        message = (
            f"The model gave no valid answer for this row: {why}. Such inputs are usually far "
            "outside the training data (or missing values the model cannot take)."
        )
    raise ModelOutputInvalid(message, rows=rows, fields=fields)


def _predict_arrays(loaded: LoadedModel, x: Any) -> tuple[Any, Any]:
    """(predictions, probabilities or None) as the estimator returns them."""
    if loaded.fast_predict is not None:
        return loaded.fast_predict(x)
    if loaded.predict_from_proba:
        probabilities = loaded.estimator.predict_proba(x)
        classes = loaded.estimator.classes_
        # The same expression ForestClassifier.predict evaluates, so the same answer.
        return classes.take(np.argmax(probabilities, axis=1), axis=0), probabilities
    predictions = loaded.estimator.predict(x)
    return predictions, (loaded.estimator.predict_proba(x) if loaded.has_proba else None)


# scikit-learn's refusal of a non-finite value one pipeline step produced for the next
# (sklearn.utils.validation._assert_all_finite): the model has no answer for that row either.
_NON_FINITE_INSIDE = re.compile(r"contains (NaN|infinity)|too large for dtype", re.IGNORECASE)


def _rows_without_answer(loaded: LoadedModel, x: Any, offset: int = 0) -> list[int]:
    """The rows of `x` the model answers NaN or infinity for, or refuses inside a pipeline
    because a step overflowed: halves the rows until each refusal is one row, so a batch
    with a few such rows costs a few calls per row, not one per row."""
    try:
        predictions, probabilities = _predict_arrays(loaded, x)
    except ValueError as exc:
        if not _NON_FINITE_INSIDE.search(str(exc)):
            raise
        if len(x) == 1:
            return [offset]
        half = len(x) // 2
        head, tail = (x.iloc[:half], x.iloc[half:]) if hasattr(x, "iloc") else (x[:half], x[half:])
        return _rows_without_answer(loaded, head, offset) + _rows_without_answer(
            loaded, tail, offset + half
        )
    return [offset + i for i in _non_finite_rows(predictions, probabilities)]


def _outputs(
    loaded: LoadedModel, rows: list[list[Any]], *, batch: bool = False
) -> list[dict[str, Any]]:
    """One {prediction, confidence[, probabilities]} per row; ModelOutputInvalid (422) when
    the model has no finite answer for some rows (the whole request fails, naming them)."""
    x = loaded.matrix(rows)
    # No np.errstate around this: it costs more than the check below on every request, and
    # numpy's overflow warning is shown once per place anyway.
    try:
        predictions, probabilities = _predict_arrays(loaded, x)
    except ValueError as exc:
        if not _NON_FINITE_INSIDE.search(str(exc)):
            raise
        _refuse_non_finite(
            _rows_without_answer(loaded, x), probabilities=None, batch=batch, refused_inside=True
        )
        raise  # every row answered when retried alone: the estimator's own fault
    _refuse_non_finite(
        _non_finite_rows(predictions, probabilities), probabilities=probabilities, batch=batch
    )
    listed = predictions.tolist() if hasattr(predictions, "tolist") else list(predictions)
    if probabilities is None:
        return _without_probabilities(loaded, listed)
    return _with_probabilities(loaded, listed, probabilities)


def _without_probabilities(loaded: LoadedModel, predictions: list[Any]) -> list[dict[str, Any]]:
    extra = {"probabilities": None} if loaded.class_labels else {}
    return [{"prediction": p, "confidence": None, **extra} for p in predictions]


def _with_probabilities(
    loaded: LoadedModel, predictions: list[Any], probabilities: Any
) -> list[dict[str, Any]]:
    labels = loaded.class_labels
    confidences = probabilities.max(axis=1).tolist()
    return [
        {"prediction": p, "confidence": c, "probabilities": dict(zip(labels, probs, strict=True))}
        for p, c, probs in zip(predictions, confidences, probabilities.tolist(), strict=True)
    ]


def _plain(row: Any) -> list[Any]:
    return row.tolist() if hasattr(row, "tolist") else row


def _result_key(info: dict[str, Any], values: list[Any]) -> str:
    # Version id and sha256 in the key: another version (a promotion, a rollback, a split)
    # can never be answered from this entry. The values are in schema order, which makes
    # their JSON canonical; hashing keeps keys short.
    digest = hashlib.blake2b(orjson.dumps(values), digest_size=16).hexdigest()
    return f"pred:v1:{info['id']}:{info['sha256'][:16]}:{digest}"


# Rows of one request observed in the confidence histogram, at most.
_CONFIDENCE_SAMPLE = 16

# The version each model was last routed to in this process: only a guess of which result-cache
# key a request will need, so it can be fetched together with the routing entry. What is served
# is decided by the routing entry read in that same round trip, never by this guess.
_last_routed: dict[str, dict[str, Any]] = {}


def _in_range(loaded: LoadedModel, matrix: Any) -> bool:
    return bool(
        np.isfinite(matrix).all()
        and not (matrix < loaded.lows).any()
        and not (matrix > loaded.highs).any()
    )


def result_cache_key_guess(*, model_name: str, body: PredictBody) -> str | None:
    """The result-cache key a single-row request will most likely need, or None."""
    info = _last_routed.get(model_name)
    if info is None or settings.PREDICTION_CACHE_TTL <= 0:
        return None
    loaded = model_cache.peek(info["id"], info["sha256"])
    typed = body.typed(loaded.decoder) if loaded is not None else None
    if typed is None or typed.batch or not _in_range(loaded, typed.matrix):
        return None
    key = _result_key(info, typed.matrix[0].tolist())
    body.guessed = (loaded, key)
    return key


def _decoder_for(
    entry: dict[str, Any], version_number: int | None, alias: str | None = None
) -> Any:
    """The typed decoder of the version this request will most likely be routed to, if this
    process has it loaded (only a first try: the routed version's own schema decides)."""
    if alias is not None:
        version_id = entry["latest"] if alias == LATEST else entry["aliases"].get(alias)
    elif version_number is not None:
        version_id = entry["by_number"].get(version_number)
    elif entry["split"]:
        version_id = entry["split"][0][0]
    else:
        version_id = entry["production"]
    info = entry["versions"].get(version_id) if version_id is not None else None
    loaded = model_cache.peek(info["id"], info["sha256"]) if info is not None else None
    return loaded.decoder if loaded is not None else None


def prediction_serve(
    *,
    user: Any,
    model_name: str,
    body: PredictBody,
    request_id: str,
    version_number: int | None = None,
    client_id: str | None = None,
    alias: str | None = None,
) -> dict[str, Any]:
    """Answers a predict request (one row or a batch) and queues it for the prediction log.
    With `alias`, the version that alias (or `latest`) points to answers, and the answer
    names the alias (predictions.alias_routing; 404 when there is no such alias).

    Errors: NotFoundError (404: model, version), ConflictError (409: no production version),
    ValidationFailed (400: rows against the input schema), PayloadTooLarge (413),
    ModelOutputInvalid (422: the model answered NaN or infinity for some rows; the whole
    request fails naming them, and nothing is cached, logged or observed by a metric but
    mlregistry_model_output_invalid_total)."""
    started = time.perf_counter()
    model_access_check(user=user, model_name=model_name)
    entry = routing_entry_get(name=model_name)
    try:
        # Plainly valid rows are decoded straight into a matrix (body.py); anything else is
        # parsed in full and validated field by field, which names every offending field.
        decoder = _decoder_for(entry, version_number, alias)
        typed = body.typed(decoder)
        if alias is None and client_id is None and (typed is not None or entry["split"]):
            # Only a split reads the body's client_id; otherwise routing comes first, so an
            # unknown version or a model without production answers before a malformed body.
            raw = typed.client_id if typed is not None else _client_id_in(body.parsed())
            client_id = str(raw) if raw is not None else None
        # From the header or the body, a key is cut to what the log's column holds (200).
        client_id = client_id[:200] if client_id else None
        info = _route(
            entry, user=user, version_number=version_number, client_id=client_id, alias=alias
        )
        if alias is None and version_number is None and not entry["split"]:
            _last_routed[model_name] = info
        loaded = model_cache.get(info, model_name=model_name)
        # The read-ahead's guess already range-checked this row for this very model and
        # computed its key: reused only when routing chose that model.
        guessed = body.guessed
        if guessed is not None and guessed[0] is not loaded:
            guessed = None
        if (
            typed is not None
            and loaded.decoder is decoder
            and (guessed is not None or _in_range(loaded, typed.matrix))
        ):
            values, batch = typed.matrix, typed.batch
        else:
            guessed = None
            rows, batch = _rows_from_payload(body.parsed())
            values = None
            if loaded.all_required_floats:
                values = fast_numeric_rows(rows, loaded.features, loaded.lows, loaded.highs)
            if values is None:
                values = rows_validate(rows, loaded.features, loaded.names, batch=batch)
    except (ValidationFailed, ParseError):
        metrics.VALIDATION_FAILURES.labels(model=model_name).inc()
        raise

    cached = False
    ttl = settings.PREDICTION_CACHE_TTL
    version_label = str(info["version"])
    try:
        if not batch and ttl > 0:
            key = guessed[1] if guessed is not None else _result_key(info, _plain(values[0]))
            hit = cache_get(key)
            if hit is not None:
                metrics.labelled(metrics.CACHE_REQUESTS, result="hit").inc()
                outputs, cached = [hit], True
            else:
                metrics.labelled(metrics.CACHE_REQUESTS, result="miss").inc()
                outputs = _outputs(loaded, values)
                cache_set_later(key, outputs[0], ttl)
        else:
            outputs = _outputs(loaded, values, batch=batch)
    except ModelOutputInvalid as exc:
        metrics.labelled(metrics.MODEL_OUTPUT_INVALID, model=model_name, version=version_label).inc(
            len(exc.rows)
        )
        raise

    metrics.labelled(
        metrics.PREDICTIONS,
        model=model_name,
        version=version_label,
        cached="true" if cached else "false",
    ).inc(len(outputs))
    if loaded.has_proba:
        confidence = metrics.labelled(
            metrics.PREDICTION_CONFIDENCE, model=model_name, version=version_label
        )
        # A histogram update is a locked write in multiprocess mode: a batch contributes a
        # random sample of its rows (the distribution is what the dashboard shows).
        cap = _CONFIDENCE_SAMPLE
        for out in outputs if len(outputs) <= cap else random.sample(outputs, cap):
            confidence.observe(out["confidence"])
    elapsed = time.perf_counter() - started
    metrics.labelled(metrics.PREDICTION_LATENCY, model=model_name).observe(elapsed)
    now = datetime.now(UTC)
    _log_served(
        entry=entry,
        info=info,
        rows=values,
        loaded=loaded,
        outputs=outputs,
        request_id=request_id,
        cached=cached,
        client_id=client_id,
        served_to_id=getattr(user, "pk", None),
        latency_ms=elapsed * 1000,
        when=now,
    )
    common = {"model": model_name, "model_version": info["version"], "stage": info["stage"]}
    if alias is not None:
        common["alias"] = alias
    if batch:
        return {
            "predictions": outputs,
            **common,
            "cached": False,
            "request_id": request_id,
            "timestamp": now.isoformat(),
        }
    return {
        **outputs[0],
        **common,
        "cached": cached,
        "request_id": request_id,
        "timestamp": now.isoformat(),
    }


def _log_served(
    *,
    entry: dict[str, Any],
    info: dict[str, Any],
    rows: Any,
    loaded: LoadedModel,
    outputs: list[dict[str, Any]],
    request_id: str,
    cached: bool,
    client_id: str | None,
    served_to_id: int | None,
    latency_ms: float,
    when: datetime,
) -> None:
    rate = settings.PREDICTION_LOG_SAMPLE_RATE
    if rate <= 0:
        return
    indexes: Any = range(len(outputs))
    if rate < 1:
        indexes = [i for i in indexes if random.random() < rate]  # noqa: S311 - sampling
    cap = settings.PREDICTION_LOG_BATCH_MAX_ROWS
    if len(indexes) > cap:
        # Writing every row of large batches would cost more than predicting them; a random
        # subset (row_index kept) still shows drift what batch traffic looks like.
        indexes = sorted(random.sample(list(indexes), cap))
    if not len(indexes):
        return
    names = loaded.feature_names if settings.PREDICTION_LOG_STORE_FEATURES else None
    model_id, version_id, client = entry["model_id"], info["id"], client_id or ""
    prediction_log_buffer.add(
        [
            LogRow(
                request_id,
                i,
                model_id,
                version_id,
                names,
                _plain(rows[i]) if names is not None else None,
                outputs[i]["prediction"],
                outputs[i]["confidence"],
                latency_ms,
                cached,
                client,
                served_to_id,
                when,
            )
            for i in indexes
        ]
    )


def prediction_log_flush() -> int:
    """Writes this process's buffered prediction-log rows now (the drift job calls it)."""
    return prediction_log_buffer.flush()


def prediction_log_prune(
    *, older_than: datetime, batch_size: int = 5000, dry_run: bool = False
) -> int:
    """Deletes prediction-log rows created before `older_than`, in batches; returns how many
    went (with `dry_run`, how many would, deleting nothing)."""
    expired = PredictionLog.objects.filter(created_at__lt=older_than)
    if dry_run:
        return expired.count()
    return delete_in_batches(expired, batch_size=batch_size)


# --- Feedback -----------------------------------------------------------------------------


def _feedback_privileged(actor: Actor) -> bool:
    # A named job is operators' code (e.g. an import of outcomes), not an API client.
    return isinstance(actor, str) or actor.has_perm("predictions.change_predictionlog")


def prediction_feedback_record(
    *, request_id: str, actual: Any, actor: Actor, row_index: int | None = None
) -> int:
    """Stores the true outcome of a served prediction; returns how many log rows it updated.

    `actual` is checked against the version (predictions.validation.actual_validate): one of
    its classes (1.0 is class 1, true is not), or a finite number for a regressor; else
    ValidationFailed (400) listing the allowed classes.

    Only the client the rows were served to, or a user who may change the prediction log, may
    do so; anyone else gets the same 404 as for an unknown request id and nothing changes."""
    rows = PredictionLog.objects.filter(request_id=request_id)
    if row_index is not None:
        rows = rows.filter(row_index=row_index)
    privileged = _feedback_privileged(actor)
    if not privileged:
        # Rows served before served_to was recorded (NULL) match nobody here: privileged only.
        # A request id is only unique per served client, so this also keeps a client that
        # reused another's X-Request-ID off the other's rows.
        rows = rows.filter(served_to_id=actor.pk)
    if not rows.exists():
        prediction_log_flush()  # it may still wait in this process's buffer
    logged = list(rows.select_related("version__model")[:2])
    if not logged:
        raise NotFoundError(
            f"No logged prediction with request id {request_id!r}"
            + (f" and row {row_index}" if row_index is not None else "")
            + " (not logged because of sampling, not flushed yet, or pruned)."
        )
    if privileged and rows.order_by().values("served_to_id").distinct().count() > 1:
        # Several clients chose this X-Request-ID: one outcome cannot be theirs all.
        raise ConflictError(
            f"Request id {request_id!r} was served to several API clients; each of them can "
            "record the outcome of its own prediction (with its own token)."
        )
    version = logged[0].version
    # A client restricted to other models learns nothing about this one: the same 404.
    model_access_check(user=actor, model_name=version.model.name)
    actual = actual_validate(
        actual, classes=version.classes, regression=version.model.task == Task.REGRESSION
    )
    count = rows.update(actual=actual, feedback_at=timezone.now())
    if not count:
        # The rows went between the read and the write (their version was deleted).
        raise NotFoundError(f"No logged prediction with request id {request_id!r} any more.")
    logger.info(
        "prediction feedback",
        extra={"request_id": request_id, "rows": count, "actor": getattr(actor, "username", actor)},
    )
    return count


# --- Traffic splits -----------------------------------------------------------------------


def _split_weights(model: RegisteredModel) -> dict[str, int]:
    # Version numbers as strings: the audit diff is JSON, whose object keys are strings.
    rows = TrafficSplit.objects.filter(model=model).values_list("version__version", "weight")
    return {str(number): weight for number, weight in sorted(rows)}


def traffic_split_set(
    *, model: RegisteredModel, splits: list[dict[str, int]], actor: Actor
) -> list[TrafficSplit]:
    """Replaces a model's traffic split: weights are whole percents summing to 100, versions
    belong to the model and are not archived."""
    errors: dict[str, list[str]] = {}
    if not splits:
        raise ValidationFailed("splits must not be empty.", fields={"splits": ["required"]})
    numbers = [s["version"] for s in splits]
    if len(set(numbers)) != len(numbers):
        errors["splits"] = ["a version may appear only once"]
    total = sum(s["weight"] for s in splits)
    if total != 100:
        errors.setdefault("splits", []).append(f"weights must sum to 100, not {total}")
    with transaction.atomic():
        locked = registered_model_lock(model_id=model.pk)
        # An out-of-range number matches no version (an IN lookup would not check its range).
        possible = [n for n in numbers if 1 <= n <= VERSION_NUMBER_MAX]
        versions = {v.version: v for v in locked.versions.filter(version__in=possible)}
        for index, number in enumerate(numbers):
            version = versions.get(number)
            if version is None:
                errors[f"splits[{index}].version"] = [f"{locked.name} has no version {number}"]
            elif version.stage == Stage.ARCHIVED:
                errors[f"splits[{index}].version"] = [f"v{number} is archived"]
        if errors:
            raise ValidationFailed("The traffic split is invalid.", fields=errors)
        before = _split_weights(locked)
        TrafficSplit.objects.filter(model=locked).delete()
        created = TrafficSplit.objects.bulk_create(
            [
                TrafficSplit(model=locked, version=versions[s["version"]], weight=s["weight"])
                for s in splits
            ]
        )
        after = {str(s["version"]): s["weight"] for s in splits}
        if before != after:
            audit_record(
                actor=actor, verb="split_set", obj=locked, changes={"split": [before, after]}
            )
        transaction.on_commit(partial(routing_invalidate, locked.name))
    logger.info(
        "traffic split set",
        extra={
            "model": model.name,
            "splits": {s["version"]: s["weight"] for s in splits},
            "actor": getattr(actor, "username", actor),
        },
    )
    return created


def traffic_split_clear(*, model: RegisteredModel, actor: Actor) -> int:
    """Ends a model's traffic split: all its traffic goes to the production version again."""
    with transaction.atomic():
        locked = registered_model_lock(model_id=model.pk)
        before = _split_weights(locked)
        count, _ = TrafficSplit.objects.filter(model=locked).delete()
        if count:
            audit_record(
                actor=actor, verb="split_clear", obj=locked, changes={"split": [before, None]}
            )
        transaction.on_commit(partial(routing_invalidate, locked.name))
    logger.info(
        "traffic split cleared",
        extra={"model": model.name, "actor": getattr(actor, "username", actor)},
    )
    return count


def traffic_split_end_for_archived(*, version: ModelVersion) -> int:
    """Called inside the transaction that archives or deletes `version`: a split naming it
    ends (every row of that model's split goes), so its traffic returns to the production
    version rather than to the other members' weights, which no longer sum to 100."""
    if not TrafficSplit.objects.filter(version=version).exists():
        return 0
    count, _ = TrafficSplit.objects.filter(model_id=version.model_id).delete()
    logger.info(
        "traffic split ended: a version in it was archived or deleted",
        extra={"model_id": version.model_id, "version": version.version},
    )
    return count
