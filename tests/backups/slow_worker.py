"""Celery app for the kill tests: the first backup or training attempt stops half-way so the
test can kill it.

Fault injected on purpose: the worker's child process replaces one step of the backup service
and of the training service with versions that record its pid and sleep the first time one of
them is reached.
"""

import os
import time
from pathlib import Path

from celery.signals import worker_process_init

from config.celery import app

__all__ = ["app"]


@worker_process_init.connect
def _pause_first_attempt(**kwargs) -> None:
    from backups import services

    marker = Path(os.environ["KILL_TEST_MARKER"])
    original = services._artifacts_archive_write

    def paused(target):
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            time.sleep(300)
        return original(target)

    services._artifacts_archive_write = paused

    from quality import training

    original_train = training._train

    def paused_train(job):
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            time.sleep(300)
        return original_train(job)

    training._train = paused_train
