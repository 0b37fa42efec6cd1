"""The fixed allow-list of estimators and parameters a training job may name.

A job names an estimator from ESTIMATORS and gives parameters that are type- and range-checked
here: no import strings, no code, nothing a user types ever reaches getattr or import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from config.errors import ValidationFailed
from config.numbers import finite_number
from mlregistry.models import Task


@dataclass(frozen=True)
class Param:
    kind: type
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    nullable: bool = False

    def problem(self, value: Any) -> str | None:
        """Why `value` is not allowed, or None."""
        if value is None:
            return None if self.nullable else "must not be null"
        if self.choices is not None:
            return None if value in self.choices else f"must be one of {list(self.choices)}"
        if self.kind is bool:
            return None if isinstance(value, bool) else "must be true or false"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be {'an integer' if self.kind is int else 'a number'}"
        if self.kind is int and not isinstance(value, int):
            return "must be an integer"
        if not finite_number(value):
            return "must be finite (and within float range)"
        if self.low is not None and value < self.low:
            return f"must be at least {self.low}"
        if self.high is not None and value > self.high:
            return f"must be at most {self.high}"
        return None


@dataclass(frozen=True)
class EstimatorSpec:
    cls: type
    task: str
    params: dict[str, Param]
    scaled: bool = False  # wrapped after a StandardScaler (linear models, neighbours)
    # Types its skops file holds beyond skops' defaults: the registry stores and loads it only
    # when the operator trusts them (SKOPS_TRUSTED_TYPES), so a job checks that up front.
    skops_types: tuple[str, ...] = ()


_TREE = {
    "max_depth": Param(int, 1, 100, nullable=True),
    "min_samples_leaf": Param(int, 1, 10_000),
    "min_samples_split": Param(int, 2, 10_000),
}
_FOREST = {**_TREE, "n_estimators": Param(int, 1, 1000)}
_BOOSTING = {
    "n_estimators": Param(int, 1, 2000),
    "learning_rate": Param(float, 1e-4, 1.0),
    "max_depth": Param(int, 1, 20),
    "subsample": Param(float, 0.1, 1.0),
}
_TREE_TYPES = ("sklearn.tree._tree.Tree",)
_CLASS_WEIGHT = {"class_weight": Param(str, choices=("balanced",), nullable=True)}

ESTIMATORS: dict[str, EstimatorSpec] = {
    "LogisticRegression": EstimatorSpec(
        LogisticRegression,
        Task.CLASSIFICATION,
        {
            "C": Param(float, 1e-6, 1e6),
            "max_iter": Param(int, 10, 100_000),
            "fit_intercept": Param(bool),
            **_CLASS_WEIGHT,
        },
        scaled=True,
    ),
    "KNeighborsClassifier": EstimatorSpec(
        KNeighborsClassifier,
        Task.CLASSIFICATION,
        {"n_neighbors": Param(int, 1, 500), "weights": Param(str, choices=("uniform", "distance"))},
        scaled=True,
        skops_types=(
            "sklearn.metrics._dist_metrics.EuclideanDistance64",
            "sklearn.neighbors._kd_tree.KDTree",
            "sklearn.neighbors._ball_tree.BallTree",
        ),
    ),
    "DecisionTreeClassifier": EstimatorSpec(
        DecisionTreeClassifier,
        Task.CLASSIFICATION,
        {**_TREE, **_CLASS_WEIGHT},
        skops_types=_TREE_TYPES,
    ),
    "RandomForestClassifier": EstimatorSpec(
        RandomForestClassifier,
        Task.CLASSIFICATION,
        {**_FOREST, **_CLASS_WEIGHT},
        skops_types=_TREE_TYPES,
    ),
    "GradientBoostingClassifier": EstimatorSpec(
        GradientBoostingClassifier, Task.CLASSIFICATION, _BOOSTING, skops_types=_TREE_TYPES
    ),
    "LinearRegression": EstimatorSpec(
        LinearRegression, Task.REGRESSION, {"fit_intercept": Param(bool)}
    ),
    "Ridge": EstimatorSpec(
        Ridge,
        Task.REGRESSION,
        {"alpha": Param(float, 0.0, 1e6), "fit_intercept": Param(bool)},
        scaled=True,
    ),
    "DecisionTreeRegressor": EstimatorSpec(
        DecisionTreeRegressor, Task.REGRESSION, _TREE, skops_types=_TREE_TYPES
    ),
    "RandomForestRegressor": EstimatorSpec(
        RandomForestRegressor, Task.REGRESSION, _FOREST, skops_types=_TREE_TYPES
    ),
    "GradientBoostingRegressor": EstimatorSpec(
        GradientBoostingRegressor, Task.REGRESSION, _BOOSTING, skops_types=_TREE_TYPES
    ),
}

# Scorer names of sklearn.metrics.get_scorer; all of them: higher is better.
METRICS: dict[str, tuple[str, ...]] = {
    Task.CLASSIFICATION: ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted"),
    Task.REGRESSION: ("r2", "neg_mean_absolute_error", "neg_root_mean_squared_error"),
}
DEFAULT_METRIC = {Task.CLASSIFICATION: "accuracy", Task.REGRESSION: "r2"}


def estimator_params_check(*, name: str, params: Any, task: str) -> dict[str, Any]:
    """Checks an allow-listed estimator name and its parameters for a model's task."""
    spec = ESTIMATORS.get(name)
    allowed = [n for n, s in ESTIMATORS.items() if s.task == task]
    if spec is None or spec.task != task:
        raise ValidationFailed(
            f"Estimator {name!r} is not allowed for a {task} model.",
            fields={"estimator": [f"must be one of: {', '.join(allowed)}"]},
        )
    untrusted = [t for t in spec.skops_types if t not in settings.SKOPS_TRUSTED_TYPES]
    if untrusted:
        raise ValidationFailed(
            f"{name} is saved with types the registry does not trust yet; add "
            f"{', '.join(untrusted)} to SKOPS_TRUSTED_TYPES to train it.",
            fields={"estimator": [f"needs SKOPS_TRUSTED_TYPES: {', '.join(untrusted)}"]},
        )
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ValidationFailed(
            "estimator_params must be a JSON object.",
            fields={"estimator_params": ["must be an object"]},
        )
    errors: dict[str, list[str]] = {}
    for key, value in params.items():
        rule = spec.params.get(key)
        if rule is None:
            errors[f"estimator_params.{key}"] = [
                f"not an allowed parameter of {name}; allowed: {', '.join(sorted(spec.params))}"
            ]
            continue
        problem = rule.problem(value)
        if problem:
            errors[f"estimator_params.{key}"] = [problem]
    if errors:
        raise ValidationFailed(f"Invalid parameters for {name}.", fields=errors)
    return dict(params)


def estimator_build(*, name: str, params: dict[str, Any], task: str, random_state: int) -> Any:
    """A fresh, unfitted estimator from the allow-list (seeded when it takes a seed)."""
    checked = estimator_params_check(name=name, params=params, task=task)
    spec = ESTIMATORS[name]
    estimator = spec.cls(**checked)
    if "random_state" in estimator.get_params():
        estimator.set_params(random_state=random_state)
    return make_pipeline(StandardScaler(), estimator) if spec.scaled else estimator


def metric_check(*, metric: str, task: str) -> str:
    """The metric to compare on (the task's default when empty), or ValidationFailed."""
    metric = metric or DEFAULT_METRIC[task]
    if metric not in METRICS[task]:
        raise ValidationFailed(
            f"Metric {metric!r} is not available for a {task} model.",
            fields={"metric": [f"must be one of: {', '.join(METRICS[task])}"]},
        )
    return metric
