"""Readiness and metrics read from the backup catalogue, so every process reports the same."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from backups.selectors import backup_newest_verified

logger = logging.getLogger(__name__)

LAST_SUCCESS_METRIC = "mlregistry_backup_last_success_timestamp_seconds"


def backup_readiness_check() -> tuple[str, Any]:
    """Degraded (never down) when the newest verified backup is missing or too old."""
    newest = backup_newest_verified()
    if newest is None:
        return "degraded", "no verified backup yet"
    finished = newest.finished_at or newest.started_at
    age_hours = (timezone.now() - finished).total_seconds() / 3600
    detail = {
        "backup": newest.pk,
        "finished_at": finished.isoformat(),
        "age_hours": round(age_hours, 2),
    }
    if age_hours > settings.BACKUP_STALE_AFTER_HOURS:
        return "degraded", {**detail, "reason": "newest verified backup is too old"}
    return "ok", detail


class BackupMetricsCollector(Collector):
    """The time of the newest verified backup, read at scrape time from the database.

    A gauge set in the worker would only show on the worker's own registry; the catalogue
    is shared, so the web process's /metrics reports it no matter which process ran the job.
    """

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Without describe(), registering would call collect(), a query at app start-up.
        yield GaugeMetricFamily(LAST_SUCCESS_METRIC, "")

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            LAST_SUCCESS_METRIC,
            "Unix time the newest verified backup finished (absent when there is none).",
        )
        try:
            newest = backup_newest_verified()
        except Exception:
            logger.warning("backup metrics unavailable: database error", exc_info=True)
            return
        if newest is not None:
            family.add_metric([], (newest.finished_at or newest.started_at).timestamp())
        yield family
