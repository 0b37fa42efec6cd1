"""The registry's extension points: other apps act on its events and add to its answers
through these, so the registry never imports them (apps depend on the registry, not back).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.dispatch import Signal

if TYPE_CHECKING:
    from mlregistry.models import ModelVersion

# Sent with `version=` inside the transaction that archives a version or is about to delete it,
# so a receiver's writes commit or roll back with the change (the predictions app ends a
# traffic split naming the version). A receiver's exception aborts the change.
version_leaving_service = Signal()

# The version detail's `online_metrics`: {"feedback_count": int, "accuracy"?: float | None,
# "mae"?: float | None}, computed by the app that holds the feedback (predictions).
_online_metrics: Callable[..., dict[str, Any]] | None = None


def online_metrics_provider_register(provider: Callable[..., dict[str, Any]]) -> None:
    """Sets the function called as provider(version=...) for a version's online metrics."""
    global _online_metrics
    _online_metrics = provider


def online_metrics_get(*, version: ModelVersion) -> dict[str, Any]:
    """A version's online metrics from the registered provider; no feedback without one."""
    if _online_metrics is None:
        return {"feedback_count": 0}
    return _online_metrics(version=version)
