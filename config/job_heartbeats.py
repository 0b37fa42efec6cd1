"""Heartbeats of running jobs, and the registry of job kinds the stalled-job reaper watches.

A job row (a backup, a training job, ...) says "running" from the moment a worker takes it up.
If that worker dies (SIGKILL, OOM, a lost machine), nothing would ever say otherwise: the
broker hands the message to another worker only after its visibility timeout, which must
exceed the longest task's time limit (hours). So while a job runs, a thread of the process
running it stamps the row's `heartbeat_at` every JOB_HEARTBEAT_SECONDS; the thread dies with
the process, and the reaper (backups.services.stalled_jobs_reap, every minute) fails rows
whose stamp is older than JOB_STALLED_AFTER_SECONDS.

Each app registers its job kinds in its AppConfig.ready() with `stalled_job_kind_register`;
the models need a nullable `heartbeat_at` DateTimeField.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import connections, models
from django.utils import timezone

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StalledJobKind:
    """How the reaper finds a kind's running rows and what it writes when their worker died.

    `model` is an app label and model name ("backups.Backup"). A row counts as running while
    `status_field` holds one of `running`; the reaper sets it to `failed`, puts the reason in
    `error_field` and `finished_field`, and sets `extra` (e.g. an error type) too. A row that
    never beat is judged by `started_field`. `next_run` ends the reason the reaper writes: what
    running the job again does. `on_failed`, if given, is called with the failed row inside the
    transaction that failed it, to do what the kind's own failure path does besides the row
    (publish the event that announces it: config.events sends it only if that commits).
    """

    name: str
    model: str
    running: tuple[str, ...] = ("running",)
    failed: str = "failed"
    status_field: str = "status"
    error_field: str = "error"
    started_field: str = "started_at"
    finished_field: str = "finished_at"
    extra: Mapping[str, Any] = field(default_factory=dict)
    next_run: str = "The next run starts afresh."
    on_failed: Callable[[Any], None] | None = None


STALLED_JOB_KINDS: dict[str, StalledJobKind] = {}


def stalled_job_kind_register(kind: StalledJobKind) -> None:
    """Adds a kind of job to those the reaper watches (idempotent: keyed by its name)."""
    STALLED_JOB_KINDS[kind.name] = kind


def heartbeat_stamp(model: type[models.Model], pk: Any) -> None:
    """Marks the job row as alive now."""
    model._base_manager.filter(pk=pk).update(heartbeat_at=timezone.now())


@contextmanager
def job_heartbeat(
    instance: models.Model, *, interval: float | None = None, stamp_now: bool = True
) -> Iterator[None]:
    """Stamps `instance`'s heartbeat now (unless `stamp_now` is False: the caller just did)
    and then every `interval` seconds (by default JOB_HEARTBEAT_SECONDS) from a background
    thread until the block ends.

    The thread uses its own database connection and closes it when it stops. A stamp that
    fails (database restarting) is logged and tried again at the next beat.
    """
    model, pk = type(instance), instance.pk
    every = interval if interval is not None else settings.JOB_HEARTBEAT_SECONDS
    if stamp_now:
        heartbeat_stamp(model, pk)
    stop = threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(every):
                try:
                    heartbeat_stamp(model, pk)
                except Exception:
                    logger.warning(
                        "job heartbeat not written",
                        extra={"job_model": model._meta.label, "job_id": pk},
                        exc_info=True,
                    )
        finally:
            connections.close_all()

    thread = threading.Thread(
        target=beat, name=f"heartbeat-{model._meta.label_lower}-{pk}", daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every + 10)
