"""The per-model overview: what its charts show (selectors) and the charts (PNG, matplotlib Agg).

Charts are drawn server-side with matplotlib's object API (Figure + Agg canvas, no pyplot
global state, so concurrent requests cannot draw into each other's figure); the page fetches
nothing from outside.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.utils import timezone

from mlregistry.models import ModelVersion, RegisteredModel, Stage, StageTransition, Task

ONLINE_ACCURACY_MAX_ROWS = 50_000
STAGE_COLOURS = {
    Stage.NONE: "#8c959f",
    Stage.STAGING: "#bf8700",
    Stage.PRODUCTION: "#1a7f37",
    Stage.ARCHIVED: "#d0d7de",
}


@dataclass(frozen=True)
class Chart:
    slug: str
    title: str
    alt: str


CHARTS = {
    chart.slug: chart
    for chart in (
        Chart(
            "timeline",
            "Versions timeline",
            "Timeline of each version's stage over time: none, staging, production, archived.",
        ),
        Chart("metrics", "Metrics per version", "Registered metrics of each version, by version."),
        Chart(
            "online-accuracy",
            "Online quality from feedback",
            "Accuracy (classifiers) or mean absolute error (regressors) per day, from feedback "
            "recorded on served predictions, one line per version.",
        ),
        Chart(
            "drift",
            "Drift adjusted p-values per feature",
            "Kolmogorov-Smirnov or chi-squared p-value per feature over time for the model's "
            "drift reports, adjusted for testing every feature (Benjamini-Hochberg), with the "
            "drift threshold as a dashed line.",
        ),
    )
}


# --- Selectors --------------------------------------------------------------------------------


def stage_segments(*, model: RegisteredModel) -> list[tuple[int, str, datetime, datetime]]:
    """(version, stage, start, end) spans from each version's creation and stage history."""
    now = timezone.now()
    versions = list(model.versions.order_by("version"))
    moves: dict[int, list[StageTransition]] = defaultdict(list)
    for move in StageTransition.objects.filter(version__model=model).order_by("created_at", "id"):
        moves[move.version_id].append(move)
    segments = []
    for version in versions:
        stage, start = Stage.NONE, version.created_at
        for move in moves[version.pk]:
            segments.append((version.version, stage, start, move.created_at))
            stage, start = move.to_stage, move.created_at
        segments.append((version.version, stage, start, now))
    return segments


def version_metrics(*, model: RegisteredModel) -> dict[str, list[tuple[int, float]]]:
    """metric name -> [(version, value)] for numeric metrics, in version order."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for version in model.versions.order_by("version").only("version", "metrics"):
        for name, value in (version.metrics or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                # Stored before uploads refused them, or written outside the API: a metric
                # beyond float range or not finite cannot be charted, so it is left out.
                try:
                    number = float(value)
                except OverflowError:
                    continue
                if math.isfinite(number):
                    series[name].append((version.version, number))
    return dict(series)


def _same(output: Any, actual: Any) -> bool:
    if isinstance(output, int | float) and isinstance(actual, int | float):
        return float(output) == float(actual)
    return str(output) == str(actual)


def online_quality(*, model: RegisteredModel) -> dict[int, list[tuple[datetime, float, int]]]:
    """version -> [(day, accuracy or MAE, rows)] from predictions that received feedback."""
    from predictions.models import PredictionLog

    rows = (
        PredictionLog.objects.filter(model=model, actual__isnull=False)
        .order_by("-created_at")
        .values_list("version__version", "created_at", "output", "actual")[
            :ONLINE_ACCURACY_MAX_ROWS
        ]
    )
    regression = model.task == Task.REGRESSION
    buckets: dict[tuple[int, datetime], list[float]] = defaultdict(list)
    for version, created, output, actual in rows:
        day = created.replace(hour=0, minute=0, second=0, microsecond=0)
        if regression:
            try:
                buckets[(version, day)].append(abs(float(output) - float(actual)))
            except (TypeError, ValueError):
                continue
        else:
            buckets[(version, day)].append(1.0 if _same(output, actual) else 0.0)
    series: dict[int, list[tuple[datetime, float, int]]] = defaultdict(list)
    for (version, day), values in sorted(buckets.items()):
        series[version].append((day, sum(values) / len(values), len(values)))
    return dict(series)


def drift_series(
    *, model: RegisteredModel, limit: int = 200
) -> tuple[dict[str, list[tuple[datetime, float]]], float | None]:
    """feature -> [(window end, p-value)] over the newest `limit` reports, and the threshold.

    The p-value is the adjusted one, the number the threshold applies to; reports written
    before adjustment existed were judged on the raw p-value, so theirs is shown."""
    from quality.models import DriftReport

    reports = list(
        DriftReport.objects.filter(model=model).exclude(features=[]).order_by("-window_end")[:limit]
    )
    series: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
    for report in reversed(reports):
        for entry in report.features:
            p_value = entry.get("p_value_adjusted", entry.get("p_value"))
            if p_value is not None:
                series[entry["feature"]].append((report.window_end, p_value))
    return dict(series), (reports[0].threshold if reports else None)


# --- Charts -----------------------------------------------------------------------------------


def _figure(width: float = 8.0, height: float = 3.2):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return figure, figure.add_subplot()


def _png(figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _empty(axes, message: str) -> None:
    axes.text(
        0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes, color="#57606a"
    )
    axes.set_xticks([])
    axes.set_yticks([])


def _unit_interval_ylim(axes, values: list[float]) -> None:
    """Scores that all lie in [0, 1] (accuracy, F1, AUC, ...) get an axis that stays in [0, 1]:
    matplotlib's margins would otherwise draw an accuracy axis up to 1.05."""
    if not values or min(values) < 0 or max(values) > 1:
        return
    low, high = min(values), max(values)
    pad = max(0.02, (high - low) * 0.1)
    axes.set_ylim(max(0.0, low - pad), min(1.0, high + pad))
    for line in axes.get_lines():
        line.set_clip_on(False)  # a point at exactly 1.0 stays whole on the top edge


def _integer_ticks(axis, numbers: list[int]) -> None:
    """Version numbers on an axis: only whole versions, never 1.5."""
    distinct = sorted(set(numbers))
    if len(distinct) <= 12:
        axis.set_ticks(distinct)
    else:
        axis.get_major_locator().set_params(integer=True)


def _timeline(model: RegisteredModel, axes) -> None:
    import matplotlib.dates as mdates
    from matplotlib.patches import Patch

    segments = stage_segments(model=model)
    if not segments:
        _empty(axes, "No versions yet")
        return
    for version, stage, start, end in segments:
        left = mdates.date2num(start)
        width = max(mdates.date2num(end) - left, 1e-4)
        axes.barh(version, width, left=left, height=0.6, color=STAGE_COLOURS.get(stage, "#000"))
    axes.xaxis_date()
    axes.set_ylabel("version")
    _integer_ticks(axes.yaxis, [s[0] for s in segments])
    axes.figure.legend(
        handles=[Patch(color=c, label=str(s.label)) for s, c in STAGE_COLOURS.items()],
        loc="outside lower center",
        fontsize="small",
        ncols=4,
        frameon=False,
    )


def _metrics(model: RegisteredModel, axes) -> None:
    series = version_metrics(model=model)
    if not series:
        _empty(axes, "No metrics registered")
        return
    shown = list(series.items())[:6]
    for name, points in shown:
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    axes.set_xlabel("version")
    _integer_ticks(axes.xaxis, [p[0] for _, points in shown for p in points])
    _unit_interval_ylim(axes, [p[1] for _, points in shown for p in points])
    axes.legend(fontsize="small")


def _online_accuracy(model: RegisteredModel, axes) -> None:
    series = online_quality(model=model)
    if not series:
        _empty(axes, "No feedback recorded yet")
        return
    for version, points in sorted(series.items()):
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"v{version}")
    axes.set_ylabel("MAE" if model.task == Task.REGRESSION else "accuracy")
    if model.task != Task.REGRESSION:
        _unit_interval_ylim(axes, [p[1] for points in series.values() for p in points])
    axes.legend(fontsize="small")
    axes.tick_params(axis="x", labelrotation=20)


def _drift(model: RegisteredModel, axes) -> None:
    series, threshold = drift_series(model=model)
    if not series:
        _empty(axes, "No drift reports with tested features yet")
        return
    for feature, points in list(series.items())[:12]:
        values = [max(p[1], 1e-300) for p in points]
        axes.plot([p[0] for p in points], values, marker=".", label=feature)
    if threshold:
        axes.axhline(threshold, color="#cf222e", linestyle="--", label=f"threshold {threshold:g}")
    axes.set_yscale("log")
    axes.set_ylabel("adjusted p-value")
    axes.figure.legend(fontsize="small", loc="outside right upper", frameon=False)
    axes.tick_params(axis="x", labelrotation=20)


_DRAW = {
    "timeline": _timeline,
    "metrics": _metrics,
    "online-accuracy": _online_accuracy,
    "drift": _drift,
}


def chart_png(*, model: RegisteredModel, chart: str) -> bytes:
    """One of the overview's charts as PNG bytes (KeyError for an unknown chart)."""
    draw = _DRAW[chart]
    figure, axes = _figure()
    axes.set_title(f"{model.name}: {CHARTS[chart].title}", fontsize="medium")
    draw(model, axes)
    return _png(figure)


def production_version(*, model: RegisteredModel) -> ModelVersion | None:
    return model.versions.filter(stage=Stage.PRODUCTION).first()


def training_job_png(*, job: Any) -> bytes:
    """A job's cross-validation fold scores next to candidate and champion holdout scores."""
    figure, axes = _figure(7.0, 2.8)
    axes.set_title(f"Training job #{job.pk}: {job.metric}", fontsize="medium")
    if not job.cv_scores:
        _empty(axes, "No scores yet")
        return _png(figure)
    folds = [f"fold {i + 1}" for i in range(len(job.cv_scores))]
    axes.bar(folds, job.cv_scores, color="#8c959f", label="cross-validation (train split)")
    labels, values, colours = [], [], []
    if job.candidate_score is not None:
        labels.append("candidate")
        values.append(job.candidate_score)
        colours.append("#0969da")
    if job.champion_score is not None:
        labels.append("champion")
        values.append(job.champion_score)
        colours.append("#1a7f37")
    axes.bar(labels, values, color=colours, label="holdout")
    for index, value in enumerate([*job.cv_scores, *values]):
        axes.annotate(f"{value:.3f}", (index, value), ha="center", va="bottom", fontsize="small")
    axes.set_ylim(top=max([*job.cv_scores, *values]) * 1.12 if max(job.cv_scores) > 0 else None)
    figure.legend(fontsize="small", loc="outside lower center", ncols=2, frameon=False)
    return _png(figure)
