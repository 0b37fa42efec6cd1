"""The backups panel of the admin's landing page (templates/admin/mlregistry/_dashboard.html)."""

from __future__ import annotations

from typing import Any

from django import template

from backups import selectors
from backups.models import Backup

register = template.Library()


def _summary(backup: Backup) -> dict[str, Any]:
    return {
        "when": backup.started_at,
        "label": str(backup),
        "status": backup.get_status_display(),
        "verified": backup.verified_at is not None,
    }


@register.simple_tag
def backup_dashboard() -> dict[str, Any] | None:
    """The newest backup as {"when", "label", "status", "verified", "last_verified"}; None
    before the first one. `last_verified` is the newest verified backup when the newest is not
    (running, failed), so the page shows what a restore would have."""
    newest = selectors.backup_list().first()
    if newest is None:
        return None
    summary = _summary(newest)
    verified = None if newest.verified_at else selectors.backup_newest_verified()
    summary["last_verified"] = _summary(verified) if verified else None
    return summary
