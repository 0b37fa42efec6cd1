"""A verified fast path for linear pipelines, the most common models on the predict path.

scikit-learn spends most of a one-row prediction checking its input (array conversion, the
finite check, feature names, fitted checks), once per pipeline step and again for
predict_proba: about half a millisecond for a scaler plus a logistic regression, against a few
microseconds of arithmetic. Our input is already checked (validation.py: a finite float64
matrix of the right width), so for the estimators below the same arithmetic is done here
directly on numpy arrays.

It is only used when it gives *exactly* scikit-learn's answer: when a model is loaded, the fast
path and the estimator both predict probe rows (one at a time and as a batch), and unless every
prediction and probability is bit-for-bit equal the model is served by scikit-learn as before.
So an estimator whose arithmetic changes in a future scikit-learn release falls back by itself.

Supported: Pipeline steps StandardScaler, MinMaxScaler, MaxAbsScaler; final
LogisticRegression (binary and multinomial), LinearRegression, Ridge, Lasso, ElasticNet. Any
other step or estimator: no fast path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.special import expit

logger = logging.getLogger(__name__)

# (predictions, probabilities or None) for a float64 matrix of validated rows.
FastPredict = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


def _transform_step(step: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, StandardScaler

    kind = type(step)
    if kind is StandardScaler:
        mean = step.mean_ if step.with_mean else None
        scale = step.scale_ if step.with_std else None

        def standard(x: np.ndarray) -> np.ndarray:
            # StandardScaler.transform's arithmetic (copy, subtract, divide), the copy made by
            # the subtraction itself: one pass over the matrix less.
            x = np.subtract(x, mean) if mean is not None else x.copy()
            if scale is not None:
                x /= scale
            return x

        return standard
    if kind is MinMaxScaler and not step.clip:
        factor, offset = step.scale_, step.min_

        def min_max(x: np.ndarray) -> np.ndarray:
            x = x * factor
            x += offset
            return x

        return min_max
    if kind is MaxAbsScaler:
        scale = step.scale_
        return lambda x: x / scale
    return None


def _softmax(scores: np.ndarray) -> np.ndarray:
    """sklearn.utils.extmath.softmax(scores, copy=False), its numpy operations in its order,
    without its array-API dispatch (two thirds of a one-row prediction's time)."""
    scores -= scores.max(axis=1).reshape(-1, 1)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=1).reshape(-1, 1)
    return scores


def _final_step(step: Any) -> FastPredict | None:
    from sklearn.linear_model import ElasticNet, Lasso, LinearRegression, LogisticRegression, Ridge

    kind = type(step)
    coef_t = getattr(step, "coef_", None)
    if coef_t is None or not isinstance(coef_t, np.ndarray) or coef_t.dtype != np.float64:
        return None
    coef_t = coef_t.T
    intercept = step.intercept_
    if kind is LogisticRegression:
        classes = step.classes_
        if len(classes) == 2:

            def binary(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                scores = (x @ coef_t + intercept).reshape(-1)
                predictions = classes[(scores > 0).astype(int)]
                positive = expit(scores)
                return predictions, np.stack([1 - positive, positive], axis=1)

            return binary

        def multinomial(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            scores = x @ coef_t + intercept
            predictions = classes[scores.argmax(axis=1)]
            return predictions, _softmax(scores)

        return multinomial
    if kind in (LinearRegression, Ridge, Lasso, ElasticNet):
        if coef_t.ndim != 1:  # several targets: leave to scikit-learn
            return None

        def linear(x: np.ndarray) -> tuple[np.ndarray, None]:
            return x @ coef_t + intercept, None

        return linear
    return None


def _compose(estimator: Any) -> FastPredict | None:
    from sklearn.pipeline import Pipeline

    steps = [s for _, s in estimator.steps] if type(estimator) is Pipeline else [estimator]
    steps = [s for s in steps if s is not None and s != "passthrough"]
    transforms = [_transform_step(s) for s in steps[:-1]]
    final = _final_step(steps[-1])
    if final is None or any(t is None for t in transforms):
        return None

    def predict(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        for transform in transforms:
            x = transform(x)
        return final(x)

    return predict


def _probe_rows(estimator: Any, width: int, count: int) -> np.ndarray:
    """Rows around the data the model was fitted on (from a scaler's statistics when it has
    them): their values don't matter for the check, only that they exercise every class."""
    rng = np.random.default_rng(0)
    first = estimator.steps[0][1] if hasattr(estimator, "steps") else estimator
    centre = getattr(first, "mean_", None)
    spread = getattr(first, "scale_", None)
    if centre is None or spread is None or getattr(first, "with_mean", False) is False:
        centre, spread = np.zeros(width), np.ones(width)
    return rng.standard_normal((count, width)) * 2 * spread + centre


def fast_predict_for(estimator: Any, *, width: int, has_proba: bool) -> FastPredict | None:
    """The fast path of `estimator` if it has one and it reproduces scikit-learn exactly."""
    try:
        fast = _compose(estimator)
    except Exception:  # an attribute this code does not know: no fast path
        logger.debug("no fast path", exc_info=True)
        return None
    if fast is None:
        return None
    probes = _probe_rows(estimator, width, 64)
    try:
        for rows in [probes[i : i + 1] for i in range(16)] + [probes]:
            predictions, probabilities = fast(rows)
            if not np.array_equal(predictions, estimator.predict(rows)):
                return _refused(estimator, "predictions differ")
            if has_proba:
                expected = estimator.predict_proba(rows)
                if probabilities is None or not np.array_equal(probabilities, expected):
                    return _refused(estimator, "probabilities differ")
    except Exception as exc:
        return _refused(estimator, f"{type(exc).__name__}: {exc}")
    return fast


def _refused(estimator: Any, why: str) -> None:
    logger.info(
        "fast path not used: it does not reproduce scikit-learn exactly",
        extra={"estimator": type(estimator).__name__, "reason": why},
    )
    return None
