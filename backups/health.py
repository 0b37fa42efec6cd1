"""Readiness and metrics read from the backup catalogue, so every process reports the same."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from backups.models import DURATION_BUCKETS, JobRun, JobRunTally
from backups.selectors import backup_newest_verified

logger = logging.getLogger(__name__)

LAST_SUCCESS_METRIC = "mlregistry_backup_last_success_timestamp_seconds"
JOB_RUNS_METRIC = "mlregistry_job_runs"  # exposed as mlregistry_job_runs_total
JOB_DURATION_METRIC = "mlregistry_job_duration_seconds"


def backup_readiness_check() -> tuple[str, Any]:
    """Degraded (never down) when a backup is overdue: the newest verified one is older than
    BACKUP_STALE_AFTER_HOURS, or there is none and the install is older than that. A fresh
    install has no backup yet and is not overdue: "ok", saying so."""
    newest = backup_newest_verified()
    if newest is None:
        installed = _installed_at()
        detail: dict[str, Any] = {"info": "no backup yet"}
        if installed is not None:
            detail["installed_at"] = installed.isoformat()
            overdue = (timezone.now() - installed).total_seconds() / 3600
            if overdue > settings.BACKUP_STALE_AFTER_HOURS:
                return "degraded", {**detail, "reason": "no verified backup, and one is overdue"}
        return "ok", detail
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


def _installed_at():
    """When this database was set up: its first applied migration (the schedule's start)."""
    from django.db.migrations.recorder import MigrationRecorder

    return (
        MigrationRecorder.Migration.objects.order_by("applied")
        .values_list("applied", flat=True)
        .first()
    )


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
            with _one_snapshot():
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
        runs: dict[tuple[str, str], int] = defaultdict(int)
        for tally in JobRunTally.objects.all():
            runs[tally.job, tally.outcome] += tally.runs
        for row in JobRun.objects.values("job", "outcome").annotate(n=Count("id")).order_by():
            runs[row["job"], row["outcome"]] += row["n"]
        for (job, outcome), n in sorted(runs.items()):
            family.add_metric([job, outcome], n)
        return family

    def _durations(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            JOB_DURATION_METRIC, "Duration of scheduled job runs.", labels=["job"]
        )
        aggregates = {
            f"le_{i}": Count("id", filter=Q(duration_seconds__lte=bound))
            for i, bound in enumerate(DURATION_BUCKETS)
        }
        # Per job: [count, sum, count at or under each bound].
        jobs: dict[str, list[Any]] = defaultdict(lambda: [0, 0.0, [0] * len(DURATION_BUCKETS)])
        for tally in JobRunTally.objects.all():
            entry = jobs[tally.job]
            entry[0] += tally.runs
            entry[1] += tally.duration_seconds_sum
            carried = 0
            for i, bound in enumerate(DURATION_BUCKETS):
                # A bound added after these runs were tallied gets the count of the bound
                # below it: a lower bound that keeps the buckets cumulative.
                carried = tally.duration_buckets.get(str(bound), carried)
                entry[2][i] += carried
        rows = JobRun.objects.values("job").annotate(
            n=Count("id"), total=Sum("duration_seconds"), **aggregates
        )
        for row in rows.order_by():
            entry = jobs[row["job"]]
            entry[0] += row["n"]
            entry[1] += row["total"] or 0
            for i in range(len(DURATION_BUCKETS)):
                entry[2][i] += row[f"le_{i}"]
        for job, (n, total, counts) in sorted(jobs.items()):
            buckets = [(str(b), count) for b, count in zip(DURATION_BUCKETS, counts, strict=True)]
            family.add_metric([job], [*buckets, ("+Inf", n)], total)
        return family


@contextmanager
def _one_snapshot() -> Iterator[None]:
    """Runs the scrape's reads against one snapshot of the database.

    Pruning moves runs from JobRun to JobRunTally; reading the two at different moments could
    miss (or double) a batch, and a counter that dips is a reset to Prometheus. PostgreSQL
    needs REPEATABLE READ for that; SQLite's transactions already read one snapshot.
    """
    if connection.in_atomic_block:  # a caller's transaction: its isolation can't change now
        yield
        return
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        yield
