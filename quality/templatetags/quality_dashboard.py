"""The registry and quality panels of the admin's landing page."""

from __future__ import annotations

from typing import Any

from django import template

from quality import dashboard

register = template.Library()


@register.simple_tag
def registry_dashboard() -> dict[str, Any]:
    """Everything the registry and quality panels show, read once per page."""
    return {
        "models": dashboard.dashboard_models(),
        "transitions": dashboard.dashboard_recent_transitions(limit=8),
        "drift": dashboard.drift_alerts(),
        "volume": dashboard.prediction_volume(hours=24),
    }
