"""What every scheduled job does around its work: one JSON log line and the job metrics.

Used by the Celery tasks and the operators' management commands alike, so a run is logged
and counted the same way whoever started it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery.exceptions import Retry
from prometheus_client import Counter, Histogram

logger = logging.getLogger("jobs")

JOB_RUNS = Counter(
    "mlregistry_job_runs_total", "Scheduled job runs by outcome.", ["job", "outcome"]
)
JOB_DURATION = Histogram(
    "mlregistry_job_duration_seconds",
    "Duration of scheduled job runs.",
    ["job"],
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600, float("inf")),
)


@contextmanager
def job_run(job: str, **fields: Any) -> Iterator[dict[str, Any]]:
    """Times the block; logs `job finished` with outcome and duration, counts it by outcome.

    The block may add fields to the yielded dict (ids, counts); they go into the log line.
    """
    details: dict[str, Any] = dict(fields)
    started = time.perf_counter()
    outcome = "success"
    try:
        yield details
    except Retry:
        outcome = "retry"  # Celery runs it again later; not a failure yet
        raise
    except BaseException as exc:
        outcome = "failure"
        details["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        duration = time.perf_counter() - started
        JOB_RUNS.labels(job=job, outcome=outcome).inc()
        JOB_DURATION.labels(job=job).observe(duration)
        logger.log(
            logging.INFO if outcome == "success" else logging.ERROR,
            # Fields for JSON logs; the message alone reads well in the text format too.
            "job finished: %s %s in %.3fs",
            job,
            outcome,
            duration,
            extra={"job": job, "outcome": outcome, "duration_s": round(duration, 3), **details},
        )
