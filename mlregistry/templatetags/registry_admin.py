"""Template tags for the registry's admin pages."""

from typing import Any

from django import template

from mlregistry import dashboard

register = template.Library()


@register.simple_tag
def registry_dashboard() -> dict[str, Any]:
    """Everything the admin landing page shows, read once per page."""
    return {
        "models": dashboard.dashboard_models(),
        "transitions": dashboard.dashboard_recent_transitions(limit=8),
        "backup": dashboard.last_backup(),
        "backups_installed": dashboard.backups_installed(),
        "drift": dashboard.drift_alerts(),
        "volume": dashboard.prediction_volume(hours=24),
    }
