"""Loaded estimators: a per-process LRU keyed by (version id, sha256).

The key holds the sha256, so a version can never be answered by other bytes than those
registered, and every load re-hashes the exact bytes it then deserialises.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from django.conf import settings

from config.errors import UnavailableError
from mlregistry.artifacts import deserialize_estimator, read_verified
from predictions.body import RowDecoder
from predictions.fastpath import fast_predict_for
from predictions.metrics import MODEL_LOAD_SECONDS, MODEL_LOADS

if TYPE_CHECKING:
    from predictions.serving import VersionInfo

logger = logging.getLogger(__name__)

NUMERIC_TYPES = ("float", "integer", "boolean")


@dataclass(frozen=True)
class Feature:
    name: str
    type: str
    required: bool
    low: float
    high: float


@dataclass
class LoadedModel:
    """An estimator ready to serve, with what the hot path needs precomputed."""

    version_id: int
    sha256: str
    estimator: Any
    features: tuple[Feature, ...]
    names: frozenset[str]
    feature_names: tuple[str, ...]
    numeric: bool  # every feature numeric: rows go in as one float64 array, not a DataFrame
    class_labels: list[str] | None  # classes_ as JSON object keys
    has_proba: bool
    # predict() is argmax(predict_proba()) by definition (forests): derive it, halving the cost.
    predict_from_proba: bool
    all_required_floats: bool  # eligible for validation.fast_numeric_rows
    lows: Any
    highs: Any
    # Whether any feature has a finite low / high bound: a side with none is not compared
    # (validation.in_range), a cost every request would pay for nothing.
    bounded_low: bool = True
    bounded_high: bool = True
    # scikit-learn's exact answer without its per-call input checks (fastpath.py), or None.
    fast_predict: Any = None
    # Typed JSON decoding of plainly valid rows (body.py), for required-float schemas only.
    decoder: RowDecoder | None = None
    # Bytes of the artifact: numpy arrays dominate a fitted estimator and skops stores them
    # uncompressed, so this tracks its resident size closely enough to bound the cache.
    size_bytes: int = 0

    def matrix(self, rows: Any) -> Any:
        """The estimator's input for validated rows (values in schema order)."""
        if isinstance(rows, np.ndarray):
            return rows
        if self.numeric:
            return np.array(rows, dtype=np.float64)
        import pandas as pd

        return pd.DataFrame(rows, columns=[f.name for f in self.features])


def compile_features(schema: list[dict[str, Any]]) -> tuple[Feature, ...]:
    return tuple(
        Feature(
            name=item["name"],
            type=item.get("type", "float"),
            required=item.get("required", True),
            low=item["min"] if item.get("min") is not None else -math.inf,
            high=item["max"] if item.get("max") is not None else math.inf,
        )
        for item in schema
    )


def _prepare(info: VersionInfo, estimator: Any) -> LoadedModel:
    features = compile_features(info.schema)
    classes = getattr(estimator, "classes_", None)
    numeric = all(f.type in NUMERIC_TYPES for f in features)
    if numeric and getattr(estimator, "feature_names_in_", None) is not None:
        # A plain float array is several times cheaper than a DataFrame, but a step that picks
        # columns by name (ColumnTransformer) needs the frame: try the array once at load.
        try:
            estimator.predict(np.zeros((1, len(features))))
        except Exception:
            numeric = False
    has_proba = classes is not None and callable(getattr(estimator, "predict_proba", None))
    all_required_floats = numeric and all(f.type == "float" and f.required for f in features)
    return LoadedModel(
        version_id=info.id,
        sha256=info.sha256,
        estimator=estimator,
        features=features,
        names=frozenset(f.name for f in features),
        feature_names=tuple(f.name for f in features),
        numeric=numeric,
        class_labels=[str(c) for c in classes.tolist()] if classes is not None else None,
        has_proba=has_proba,
        predict_from_proba=_predict_is_argmax_of_proba(estimator),
        all_required_floats=all_required_floats,
        lows=np.array([f.low for f in features], dtype=np.float64),
        highs=np.array([f.high for f in features], dtype=np.float64),
        bounded_low=any(math.isfinite(f.low) for f in features),
        bounded_high=any(math.isfinite(f.high) for f in features),
        fast_predict=(
            fast_predict_for(estimator, width=len(features), has_proba=has_proba)
            if numeric
            else None
        ),
        decoder=RowDecoder(tuple(f.name for f in features)) if all_required_floats else None,
    )


def _predict_is_argmax_of_proba(estimator: Any) -> bool:
    """True for a (pipeline ending in a) single-output forest classifier, whose predict() is
    literally classes_.take(argmax(predict_proba(X))): computing both walks every tree twice."""
    from sklearn.ensemble._forest import ForestClassifier
    from sklearn.pipeline import Pipeline

    final = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
    return isinstance(final, ForestClassifier) and getattr(final, "n_outputs_", 1) == 1


class ModelCache:
    """A thread-safe LRU of LoadedModel; a model is loaded once even under concurrent misses."""

    def __init__(self) -> None:
        self._items: OrderedDict[tuple[int, str], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[int, str], threading.Lock] = {}
        # (version id, sha256) -> why its last load in this process failed, for readiness;
        # forgotten when a load of it succeeds. Bounded by the versions ever routed to.
        self.failures: dict[tuple[int, str], str] = {}

    def peek(self, version_id: int, sha256: str, *, touch: bool = False) -> LoadedModel | None:
        """The loaded model if this process has it (never loads); with `touch`, it counts as
        used, as a get does, for the LRU."""
        key = (version_id, sha256)
        if not touch:
            return self._items.get(key)
        with self._lock:
            loaded = self._items.get(key)
            if loaded is not None:
                self._items.move_to_end(key)
            return loaded

    def get(self, info: VersionInfo, *, model_name: str) -> LoadedModel:
        key = (info.id, info.sha256)
        with self._lock:
            loaded = self._items.get(key)
            if loaded is not None:
                self._items.move_to_end(key)
                return loaded
            load_lock = self._loading.setdefault(key, threading.Lock())
        with load_lock:
            with self._lock:
                loaded = self._items.get(key)
            if loaded is None:
                try:
                    loaded = self._load(info, model_name=model_name)
                except UnavailableError as exc:
                    self.failures[key] = exc.message
                    raise
                self.failures.pop(key, None)
                with self._lock:
                    self._items[key] = loaded
                    self._evict()
        with self._lock:
            self._loading.pop(key, None)
        return loaded

    def _evict(self) -> None:
        """Drops least recently used models past PREDICTION_MODEL_CACHE_SIZE models or
        PREDICTION_MODEL_CACHE_MAX_MB; the newest always stays, however large, so it serves."""
        limit = settings.PREDICTION_MODEL_CACHE_MAX_MB * 1024 * 1024
        total = sum(item.size_bytes for item in self._items.values())
        while len(self._items) > 1 and (
            len(self._items) > settings.PREDICTION_MODEL_CACHE_SIZE or total > limit
        ):
            _, dropped = self._items.popitem(last=False)
            total -= dropped.size_bytes

    def _load(self, info: VersionInfo, *, model_name: str) -> LoadedModel:
        started = time.perf_counter()
        version = str(info.version)
        try:
            what = f"{model_name} v{info.version}"
            data = read_verified(info.artifact, info.sha256, what=what)
            # Refused bytes or a non-estimator raise 503 artifact_invalid and are not cached.
            loaded = _prepare(info, deserialize_estimator(data, info.format, what=what))
            loaded.size_bytes = len(data)
        except Exception as exc:
            MODEL_LOADS.labels(model=model_name, version=version, result="error").inc()
            logger.exception(
                "model load failed", extra={"model": model_name, "version": info.version}
            )
            if isinstance(exc, UnavailableError):
                raise
            raise UnavailableError(
                f"{model_name} v{info.version} could not be loaded ({type(exc).__name__})."
            ) from exc
        _freeze_after_load()
        seconds = time.perf_counter() - started
        MODEL_LOADS.labels(model=model_name, version=version, result="ok").inc()
        MODEL_LOAD_SECONDS.labels(model=model_name).observe(seconds)
        logger.info(
            "model loaded",
            extra={"model": model_name, "version": info.version, "seconds": round(seconds, 3)},
        )
        return loaded

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.failures.clear()

    def __len__(self) -> int:
        return len(self._items)


def _freeze_after_load() -> None:
    """In a process that froze its imports (config/wsgi.py), freezes again after a load.

    A model and the modules its load imported (skops, scikit-learn submodules) live as long as
    they are cached, but were left for the collector to scan: each full collection in a web
    worker then took ~20-80 ms, one request's time many times over, and every request queued
    behind it waited as long. The load's own cyclic garbage (thousands of objects for a forest)
    is collected first, so nothing freezes that is already garbage; the models themselves hold
    no reference cycles, so an evicted one is still freed. Once per load, which already takes
    tens of milliseconds.
    """
    if gc.get_freeze_count():
        gc.collect()
        gc.freeze()


model_cache = ModelCache()
