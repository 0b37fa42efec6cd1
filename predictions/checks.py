"""System checks (`manage.py check`, and before every management command) of what the
predictions app needs from its environment."""

from __future__ import annotations

import sqlite3
from typing import Any

from django.conf import settings
from django.core import checks

SQLITE_RETURNING = (3, 35, 0)


def sqlite_returning_check(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """predictions.E001 when a SQLite database is configured and the SQLite library Python
    links is older than 3.35, the first with `UPDATE ... RETURNING`, which a batch chunk's
    claim and count use (predictions.batch._bookkeeping_sql). Django 5.2 itself accepts
    3.31."""
    if "django.db.backends.sqlite3" not in _engines():
        return []
    if sqlite3.sqlite_version_info >= SQLITE_RETURNING:
        return []
    return [
        checks.Error(
            f"SQLite {sqlite3.sqlite_version} is older than 3.35: batch scoring jobs need "
            "UPDATE ... RETURNING.",
            hint="Use a Python built with a newer SQLite, or PostgreSQL (DATABASE_URL).",
            id="predictions.E001",
        )
    ]


def _engines() -> set[str]:
    return {database.get("ENGINE", "") for database in settings.DATABASES.values()}
