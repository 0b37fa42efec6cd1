"""What the server answers, as frozen dataclasses (unknown keys are kept in ``extra``)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Self

Scalar = float | int | str | bool


class _FromDict:
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in fields(cls)} - {"extra"}  # type: ignore[arg-type]
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**known, extra=extra)  # type: ignore[call-arg]


@dataclass(frozen=True)
class RegisteredModel(_FromDict):
    """A registered model: name, task (classification | regression), production/latest."""

    name: str
    task: str
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    owner: str | None = None
    production_version: int | None = None
    latest_version: int | None = None
    created_at: str | None = None
    updated_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class ModelVersion(_FromDict):
    """One version: stage (none | staging | production | archived), the aliases pointing to
    it, tags, artifact SHA-256, the input schema (ordered features), classes, metrics, params,
    metadata and lineage (run_id, git_commit, source_url, training_dataset {uri, sha256})."""

    name: str
    version: int
    stage: str
    artifact_sha256: str
    aliases: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    run_id: str = ""
    git_commit: str = ""
    source_url: str = ""
    training_dataset: dict[str, str] | None = None
    artifact_format: str = "skops"
    artifact_size: int = 0
    input_schema: list[dict[str, Any]] = field(default_factory=list)
    classes: list[Scalar] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    library_versions: dict[str, str] = field(default_factory=dict)
    source: str | None = None
    created_by: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def feature_names(self) -> list[str]:
        return [f["name"] for f in self.input_schema]


@dataclass(frozen=True)
class ModelAlias(_FromDict):
    """A named pointer to one version of a model (``champion``, ``shadow``, ...)."""

    alias: str
    version: int
    updated_at: str | None = None
    updated_by: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Prediction(_FromDict):
    """One row's answer; ``probabilities`` is None without predict_proba (and for regressors).
    ``request_id`` (single-row answers) is what ``Registry.feedback`` takes."""

    prediction: Scalar
    confidence: float | None = None
    probabilities: dict[str, float] | None = None
    model: str | None = None
    model_version: int | None = None
    stage: str | None = None
    alias: str | None = None
    cached: bool = False
    request_id: str | None = None
    timestamp: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class BatchPrediction:
    """A batch's answer: one Prediction per row, in order, and who served it."""

    predictions: list[Prediction]
    model: str
    model_version: int
    stage: str
    request_id: str
    timestamp: str
    alias: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchPrediction:
        return cls(
            predictions=[Prediction.from_dict(p) for p in data["predictions"]],
            model=data["model"],
            model_version=data["model_version"],
            stage=data["stage"],
            request_id=data["request_id"],
            timestamp=data["timestamp"],
            alias=data.get("alias"),
        )

    def __len__(self) -> int:
        return len(self.predictions)


@dataclass(frozen=True)
class TrafficSplit:
    """A model's split: version -> weight (percent); empty means all traffic to production."""

    model: str
    weights: dict[int, int]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrafficSplit:
        return cls(model=data["model"], weights={s["version"]: s["weight"] for s in data["splits"]})
