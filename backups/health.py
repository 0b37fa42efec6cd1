"""Readiness and metrics read from the backup catalogue, so every process reports the same."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db.models import Count, Q, Sum
from django.utils import timezone
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from backups.models import JobRun
from backups.selectors import backup_newest_verified

logger = logging.getLogger(__name__)

LAST_SUCCESS_METRIC = "mlregistry_backup_last_success_timestamp_seconds"
JOB_RUNS_METRIC = "mlregistry_job_runs"  # exposed as mlregistry_job_runs_total
JOB_DURATION_METRIC = "mlregistry_job_duration_seconds"
DURATION_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600)


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


class JobMetricsCollector(Collector):
    """Job metrics read at scrape time from the database.

    Jobs run in worker processes, often on other machines; counters kept in their memory would
    never reach the web process's /metrics. The catalogue (Backup, JobRun) is shared, so any
    process reports every run.
    """

    def describe(self) -> Iterator[Any]:
        # Without describe(), registering would call collect(), a query at app start-up.
        yield GaugeMetricFamily(LAST_SUCCESS_METRIC, "")
        yield CounterMetricFamily(JOB_RUNS_METRIC, "", labels=["job", "outcome"])
        yield HistogramMetricFamily(JOB_DURATION_METRIC, "", labels=["job"])

    def collect(self) -> Iterator[Any]:
        try:
            families = [self._last_backup(), self._runs(), self._durations()]
        except Exception:
            logger.warning("job metrics unavailable: database error", exc_info=True)
            return
        yield from families

    def _last_backup(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            LAST_SUCCESS_METRIC,
            "Unix time the newest verified backup finished (absent when there is none).",
        )
        newest = backup_newest_verified()
        if newest is not None:
            family.add_metric([], (newest.finished_at or newest.started_at).timestamp())
        return family

    def _runs(self) -> CounterMetricFamily:
        family = CounterMetricFamily(
            JOB_RUNS_METRIC, "Scheduled job runs by outcome.", labels=["job", "outcome"]
        )
        rows = JobRun.objects.values("job", "outcome").annotate(n=Count("id"))
        for row in rows.order_by("job", "outcome"):
            family.add_metric([row["job"], row["outcome"]], row["n"])
        return family

    def _durations(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            JOB_DURATION_METRIC, "Duration of scheduled job runs.", labels=["job"]
        )
        aggregates = {
            f"le_{i}": Count("id", filter=Q(duration_seconds__lte=bound))
            for i, bound in enumerate(DURATION_BUCKETS)
        }
        rows = JobRun.objects.values("job").annotate(
            n=Count("id"), total=Sum("duration_seconds"), **aggregates
        )
        for row in rows.order_by("job"):
            buckets = [(str(b), row[f"le_{i}"]) for i, b in enumerate(DURATION_BUCKETS)]
            family.add_metric([row["job"]], [*buckets, ("+Inf", row["n"])], row["total"] or 0)
        return family
