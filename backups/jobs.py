"""What every scheduled job does around its work: one log line and one JobRun row.

Celery tasks and the operators' management commands both use `job_run`, so a run is logged
and counted the same way whoever started it. Other apps' jobs (drift, retraining) use it too.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from celery.exceptions import Retry
from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

logger = logging.getLogger("jobs")


@contextmanager
def job_run(job: str, **fields: Any) -> Iterator[dict[str, Any]]:
    """Times the block; logs `job finished` with outcome and duration and records a JobRun.

    The block may add fields to the yielded dict (ids, counts); they go into both.
    """
    details: dict[str, Any] = dict(fields)
    started_at = timezone.now()
    started = time.perf_counter()
    outcome = "success"
    error = ""
    try:
        yield details
    except Retry:
        outcome = "retry"  # Celery runs it again later; not a failure yet
        raise
    except BaseException as exc:
        outcome = "failure"
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        duration = time.perf_counter() - started
        logger.log(
            logging.INFO if outcome == "success" else logging.ERROR,
            # Fields for JSON logs; the message alone reads well in the text format too.
            "job finished: %s %s in %.3fs",
            job,
            outcome,
            duration,
            extra={
                "job": job,
                "outcome": outcome,
                "duration_s": round(duration, 3),
                **({"error": error} if error else {}),
                **details,
            },
        )
        _record(job, outcome, started_at, duration, details, error)


def _record(
    job: str,
    outcome: str,
    started_at: datetime,
    duration: float,
    details: dict[str, Any],
    error: str,
) -> None:
    from backups.models import JobRun

    try:
        JobRun.objects.create(
            job=job,
            outcome=outcome,
            started_at=started_at,
            duration_seconds=duration,
            details=_json_safe(details),
            error=error[:5000],
        )
    except Exception:
        # The job's own result stands; a database that is down loses only this record.
        logger.warning("could not record the job run", extra={"job": job}, exc_info=True)


def _json_safe(details: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(details, cls=DjangoJSONEncoder, default=str))
