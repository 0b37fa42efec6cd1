"""`serve`: one predict request, from the access check to the queued log rows."""

from __future__ import annotations

import hashlib
import math
import random
import re
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
from django.conf import settings
from rest_framework.exceptions import ParseError

from config.errors import DomainError, ValidationFailed
from config.readahead import ORDER_RESULT, ReadAheadPlan, readahead_register
from mlregistry.access import model_access_check
from predictions import metrics
from predictions.body import PredictBody, TypedRows
from predictions.cache import cache_get
from predictions.loader import LoadedModel, model_cache
from predictions.logbuffer import LogRow, prediction_log_buffer
from predictions.serving.readahead import cache_set_later
from predictions.serving.routing import Target, routing_entry_get
from predictions.serving.types import RoutingEntry, VersionInfo
from predictions.validation import fast_numeric_rows, in_range, payload_rows, rows_validate


class ModelOutputInvalid(DomainError):
    """The model answered NaN or infinity for some rows (422): nothing of the request is
    served, cached, logged or observed by a metric."""

    status_code = 422
    error_type = "model_output_invalid"

    def __init__(self, message: str, *, rows: list[int], fields: dict[str, list[str]]):
        super().__init__(message, fields=fields)
        self.rows = rows


# Served's probabilities are read from its (cached) native rows only if a protocol asks.
FROM_ROWS: Any = object()


class Served:
    """The answer to one predict request, as arrays (protocols encode these) and, on demand,
    as the native endpoint's JSON (`native()`).

    `labels`: one prediction per row (a numpy array, or a list); `probabilities`: a float64
    [rows, classes] array in the order of `class_labels`, or None (a regressor, or a
    classifier without predict_proba); `version`: the VersionInfo that answered; `batch`: the
    request was a batch (`instances`), not one row (`features`); `cached`: answered from the
    result cache."""

    __slots__ = (
        "_confidences",
        "_predictions",
        "_probabilities",
        "_rows",
        "batch",
        "cached",
        "class_labels",
        "labels",
        "model_name",
        "request_id",
        "timestamp",
        "version",
    )

    def __init__(
        self,
        *,
        model_name: str,
        version: VersionInfo,
        labels: Any,
        probabilities: Any,
        class_labels: list[str] | None,
        batch: bool,
        cached: bool,
        request_id: str,
        timestamp: datetime,
        rows: list[dict[str, Any]] | None = None,
        confidences: list[float] | None = None,
    ) -> None:
        self.model_name = model_name
        self.version = version
        self.labels = labels
        self._probabilities = probabilities
        self.class_labels = class_labels
        self.batch = batch
        self.cached = cached
        self.request_id = request_id
        self.timestamp = timestamp
        self._rows = rows
        self._predictions: list[Any] | None = None
        self._confidences = confidences

    @property
    def probabilities(self) -> np.ndarray | None:
        if self._probabilities is FROM_ROWS:
            # A cached answer: its rows hold the probabilities, in the model's class order.
            rows = self._rows or []
            found = [row.get("probabilities") for row in rows]
            self._probabilities = (
                np.array([list(p.values()) for p in found], dtype=np.float64)
                if found and all(p is not None for p in found)
                else None
            )
        return self._probabilities

    def __len__(self) -> int:
        return len(self.labels)

    def predictions(self) -> list[Any]:
        """The predictions as JSON values, one per row."""
        if self._predictions is None:
            labels = self.labels
            self._predictions = labels.tolist() if hasattr(labels, "tolist") else list(labels)
        return self._predictions

    def confidences(self) -> list[float] | None:
        """Each row's highest probability, or None without probabilities."""
        if self._confidences is None:
            probabilities = self.probabilities
            if probabilities is None:
                return None
            self._confidences = probabilities.max(axis=1).tolist()
        return self._confidences

    def rows(self) -> list[dict[str, Any]]:
        """One {prediction, confidence[, probabilities]} per row, as the native API answers."""
        if self._rows is None:
            self._rows = _native_rows(
                self.predictions(), self.probabilities, self.class_labels, self.confidences()
            )
        return self._rows

    def native(self) -> dict[str, Any]:
        """The native endpoint's answer: PredictResponse (one row) or BatchPredictResponse."""
        common = {
            "model": self.model_name,
            "model_version": self.version.version,
            "stage": self.version.stage,
        }
        tail = {
            "cached": self.cached,
            "request_id": self.request_id,
            "timestamp": self.timestamp.isoformat(),
        }
        if self.batch:
            return {"predictions": self.rows(), **common, **tail}
        return {**self.rows()[0], **common, **tail}


def _native_rows(
    predictions: list[Any],
    probabilities: np.ndarray | None,
    labels: list[str] | None,
    confidences: list[float] | None = None,
) -> list[dict[str, Any]]:
    if probabilities is None:
        extra = {"probabilities": None} if labels else {}
        return [{"prediction": p, "confidence": None, **extra} for p in predictions]
    if confidences is None:
        confidences = probabilities.max(axis=1).tolist()
    return [
        {"prediction": p, "confidence": c, "probabilities": dict(zip(labels, probs, strict=True))}
        for p, c, probs in zip(predictions, confidences, probabilities.tolist(), strict=True)
    ]


# --- the request's rows -------------------------------------------------------------------


def _validated(
    loaded: LoadedModel, body: PredictBody, typed: TypedRows | None, decoder: Any
) -> tuple[Any, bool]:
    """(rows in schema order, batch) for the routed model. Rows the typed decoder of this very
    model accepted and that are in range go in as they are; anything else is parsed in full
    and validated field by field, which names every offending field."""
    if typed is not None and loaded.decoder is decoder and in_range(loaded, typed.matrix):
        return typed.matrix, typed.batch
    rows, batch = payload_rows(body.parsed())
    values = None
    if loaded.all_required_floats:
        values = fast_numeric_rows(rows, loaded.features, loaded.lows, loaded.highs)
    if values is None:
        values = rows_validate(rows, loaded.features, loaded.names, batch=batch)
    return values, batch


# --- predicting ---------------------------------------------------------------------------


def non_finite_rows(predictions: Any, probabilities: Any) -> list[int]:
    """Indexes of the rows whose prediction (an array, one value or several per row), or any of
    whose probabilities ([rows, classes] or None), is not finite: JSON has no such numbers."""
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


# Rows named in a model_output_invalid error, at most (as for validation errors).
_REPORTED_ROWS = 100


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


def predict_arrays(loaded: LoadedModel, x: Any) -> tuple[Any, Any]:
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


def rows_without_answer(loaded: LoadedModel, x: Any, offset: int = 0) -> list[int]:
    """The rows of `x` the model answers NaN or infinity for, or refuses inside a pipeline
    because a step overflowed: halves the rows until each refusal is one row, so a batch
    with a few such rows costs a few calls per row, not one per row."""
    try:
        predictions, probabilities = predict_arrays(loaded, x)
    except ValueError as exc:
        if not _NON_FINITE_INSIDE.search(str(exc)):
            raise
        if len(x) == 1:
            return [offset]
        half = len(x) // 2
        head, tail = (x.iloc[:half], x.iloc[half:]) if hasattr(x, "iloc") else (x[:half], x[half:])
        return rows_without_answer(loaded, head, offset) + rows_without_answer(
            loaded, tail, offset + half
        )
    return [offset + i for i in non_finite_rows(predictions, probabilities)]


def _predict(loaded: LoadedModel, rows: Any, *, batch: bool) -> tuple[Any, Any]:
    """(predictions, probabilities or None) for validated rows; ModelOutputInvalid (422) when
    the model has no finite answer for some rows (the whole request fails, naming them)."""
    x = loaded.matrix(rows)
    # No np.errstate around this: it costs more than the check below on every request, and
    # numpy's overflow warning is shown once per place anyway.
    try:
        predictions, probabilities = predict_arrays(loaded, x)
    except ValueError as exc:
        if not _NON_FINITE_INSIDE.search(str(exc)):
            raise
        _refuse_non_finite(
            rows_without_answer(loaded, x), probabilities=None, batch=batch, refused_inside=True
        )
        raise  # every row answered when retried alone: the estimator's own fault
    _refuse_non_finite(
        non_finite_rows(predictions, probabilities), probabilities=probabilities, batch=batch
    )
    return predictions, probabilities


# --- the result cache ---------------------------------------------------------------------


def _plain(row: Any) -> list[Any]:
    return row.tolist() if hasattr(row, "tolist") else row


def result_cache_key(version: VersionInfo, values: list[Any]) -> str:
    """The result-cache key of one row (values in schema order) answered by `version`.

    Version id and sha256 in the key: another version (a promotion, a rollback, a split) can
    never be answered from this entry. Values in schema order make their JSON canonical;
    hashing keeps keys short."""
    digest = hashlib.blake2b(orjson.dumps(values), digest_size=16).hexdigest()
    return f"pred:v1:{version.id}:{version.sha256[:16]}:{digest}"


class _RouteMemo:
    """The version each target last answered by in this process, when that does not depend on
    the request (no split): only a guess of which result-cache key a request will need, so it
    can be fetched with the routing entry. What is served is decided by the routing entry read
    in that same round trip, never by this guess. Bounded: cleared past MAX_TARGETS."""

    MAX_TARGETS = 4096

    def __init__(self) -> None:
        self._last: dict[Target, VersionInfo] = {}

    def remember(self, target: Target, version: VersionInfo) -> None:
        if len(self._last) >= self.MAX_TARGETS:
            self._last.clear()
        self._last[target] = version

    def forget(self, target: Target) -> None:
        self._last.pop(target, None)

    def guess_key(self, target: Target, body: PredictBody) -> str | None:
        """The result-cache key a single-row request will most likely need, or None; the
        body remembers it with the model it was range-checked for."""
        version = self._last.get(target)
        if version is None or settings.PREDICTION_CACHE_TTL <= 0:
            return None
        loaded = model_cache.peek(version.id, version.sha256)
        typed = body.typed(loaded.decoder) if loaded is not None else None
        if typed is None or typed.batch or not in_range(loaded, typed.matrix):
            return None
        key = result_cache_key(version, typed.matrix[0].tolist())
        body.guessed = (loaded, key)
        return key


_route_memo = _RouteMemo()


def _read_ahead(plan: ReadAheadPlan) -> None:
    # The body is read ahead only for a token this process has verified before: a made-up
    # token must never make the server wait for a body (a slow client sending one would hold
    # this thread); it gets its 401 first.
    if plan.target is None or plan.user_pk is None or plan.body is None:
        return
    body = plan.body()
    if body is not None:
        key = _route_memo.guess_key(plan.target, body)
        if key is not None:
            plan.read(key)


readahead_register("result_cache", _read_ahead, order=ORDER_RESULT)


# --- serving ------------------------------------------------------------------------------

# Rows of one request observed in the confidence histogram, at most.
_CONFIDENCE_SAMPLE = 16


def _client_id_of(
    target: Target, entry: RoutingEntry, body: PredictBody, typed: TypedRows | None, given: Any
) -> str | None:
    client_id = given
    if client_id is None and (typed is not None or target.splits(entry)):
        # Only a split reads the body's client_id; otherwise routing comes first, so an
        # unknown version or a model without production answers before a malformed body.
        raw = typed.client_id if typed is not None else _client_id_in(body.parsed())
        client_id = str(raw) if raw is not None else None
    # From the header or the body, a key is cut to what the log's column holds (200).
    return client_id[:200] if client_id else None


def _client_id_in(payload: Any) -> Any:
    return payload.get("client_id") if isinstance(payload, dict) else None


def serve(
    *,
    user: Any,
    target: Target,
    body: PredictBody,
    request_id: str,
    client_id: str | None = None,
) -> Served:
    """Answers a predict request (one row or a batch) and queues it for the prediction log.

    Errors: NotFoundError (404: model, version, or a model the caller's policy excludes),
    ForbiddenError (403: an archived version, for non-staff), ConflictError (409: no
    production version), ValidationFailed (400: rows against the input schema),
    PayloadTooLarge (413), UnavailableError (503: the artifact cannot be loaded),
    ModelOutputInvalid (422: the model answered NaN or infinity for some rows; the whole
    request fails naming them, and nothing is cached, logged or observed by a metric but
    mlregistry_model_output_invalid_total)."""
    started = time.perf_counter()
    name = target.model_name
    model_access_check(user=user, model_name=name)
    entry = routing_entry_get(name=name)
    try:
        # Plainly valid rows are decoded straight into a matrix with the decoder of the version
        # this request will most likely be answered by (body.py); the routed version's own
        # schema decides whether that stands.
        likely = target.likely(entry)
        likely_loaded = model_cache.peek(likely.id, likely.sha256) if likely else None
        decoder = likely_loaded.decoder if likely_loaded is not None else None
        typed = body.typed(decoder)
        client_id = _client_id_of(target, entry, body, typed, client_id)
        version = target.choose(entry, user=user, client_id=client_id)
        if not target.splits(entry):
            _route_memo.remember(target, version)
        loaded = model_cache.get(version, model_name=name)
        # The read-ahead's guess already range-checked this row for this very model and
        # computed its key: reused only when routing chose that model.
        guessed = body.guessed
        if (
            guessed is not None
            and guessed[0] is loaded
            and typed is not None
            and loaded.decoder is decoder
        ):
            values, batch, key = typed.matrix, typed.batch, guessed[1]
        else:
            (values, batch), key = _validated(loaded, body, typed, decoder), None
    except (ValidationFailed, ParseError):
        metrics.VALIDATION_FAILURES.labels(model=name).inc()
        raise

    version_label = str(version.version)
    try:
        served = _answer(loaded, version, values, batch=batch, key=key)
    except ModelOutputInvalid as exc:
        metrics.labelled(metrics.MODEL_OUTPUT_INVALID, model=name, version=version_label).inc(
            len(exc.rows)
        )
        raise
    labels, probabilities, rows, cached = served
    # A single row's answer was built (to be cached) or read from the cache: its confidence too.
    confidences = [rows[0]["confidence"]] if rows and rows[0]["confidence"] is not None else None
    result = Served(
        model_name=name,
        version=version,
        labels=labels,
        probabilities=probabilities,
        class_labels=loaded.class_labels,
        batch=batch,
        cached=cached,
        request_id=request_id,
        timestamp=datetime.now(UTC),
        rows=rows,
        confidences=confidences,
    )
    _observe(result, loaded, started)
    _log_served(
        result,
        entry=entry,
        values=values,
        loaded=loaded,
        client_id=client_id,
        served_to_id=getattr(user, "pk", None),
        latency_ms=(time.perf_counter() - started) * 1000,
    )
    return result


def _answer(
    loaded: LoadedModel, version: VersionInfo, values: Any, *, batch: bool, key: str | None
) -> tuple[Any, Any, list[dict[str, Any]] | None, bool]:
    """(labels, probabilities, native rows if already built, cached) for validated rows: a
    single row from the result cache when it is there, else predicted (and cached)."""
    ttl = settings.PREDICTION_CACHE_TTL
    if batch or ttl <= 0:
        labels, probabilities = _predict(loaded, values, batch=batch)
        return labels, probabilities, None, False
    key = key or result_cache_key(version, _plain(values[0]))
    hit = cache_get(key)
    if isinstance(hit, dict) and "prediction" in hit:
        metrics.labelled(metrics.CACHE_REQUESTS, result="hit").inc()
        return [hit["prediction"]], FROM_ROWS, [hit], True
    metrics.labelled(metrics.CACHE_REQUESTS, result="miss").inc()
    labels, probabilities = _predict(loaded, values, batch=False)
    # Plain Python values (not numpy scalars, which a custom model's list may hold): the cache
    # reads back only plain data (config/cache_serializer.py).
    listed = np.asarray(labels).tolist() if hasattr(labels, "tolist") else list(labels)
    listed = [value.item() if isinstance(value, np.generic) else value for value in listed]
    rows = _native_rows(listed, probabilities, loaded.class_labels)
    cache_set_later(key, rows[0], ttl)
    return labels, probabilities, rows, False


def _observe(served: Served, loaded: LoadedModel, started: float) -> None:
    name, version = served.model_name, str(served.version.version)
    metrics.labelled(
        metrics.PREDICTIONS,
        model=name,
        version=version,
        cached="true" if served.cached else "false",
    ).inc(len(served))
    values = served.confidences() if loaded.has_proba else None
    if values is not None:
        confidence = metrics.labelled(metrics.PREDICTION_CONFIDENCE, model=name, version=version)
        # A histogram update is a locked write in multiprocess mode: a batch contributes a
        # random sample of its rows (the distribution is what the dashboard shows).
        if len(values) > _CONFIDENCE_SAMPLE:
            values = random.sample(values, _CONFIDENCE_SAMPLE)
        for value in values:
            confidence.observe(value)
    metrics.labelled(metrics.PREDICTION_LATENCY, model=name).observe(time.perf_counter() - started)


def _log_served(
    served: Served,
    *,
    entry: RoutingEntry,
    values: Any,
    loaded: LoadedModel,
    client_id: str | None,
    served_to_id: int | None,
    latency_ms: float,
) -> None:
    rate = settings.PREDICTION_LOG_SAMPLE_RATE
    if rate <= 0:
        return
    indexes: Any = range(len(served))
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
    predictions = served.predictions()
    confidences = served.confidences()
    model_id, version_id, client = entry.model_id, served.version.id, client_id or ""
    when, request_id, cached = served.timestamp, served.request_id, served.cached
    prediction_log_buffer.add(
        [
            LogRow(
                request_id,
                i,
                model_id,
                version_id,
                names,
                _plain(values[i]) if names is not None else None,
                predictions[i],
                confidences[i] if confidences is not None else None,
                latency_ms,
                cached,
                client,
                served_to_id,
                when,
            )
            for i in indexes
        ]
    )
