"""Celery app for the batch kill tests: the first attempt at chunk 1 stops half-way so the
test can kill the process running it.

Fault injected on purpose: the worker's child process replaces the chunk-scoring step of
predictions.batch with one that records its pid and sleeps the first time chunk 1 is reached.
"""

import os
import time
from pathlib import Path

from celery.signals import worker_process_init

from config.celery import app

__all__ = ["app"]


@worker_process_init.connect
def _pause_chunk_one(**kwargs) -> None:
    from predictions import batch

    marker = Path(os.environ["KILL_TEST_MARKER"])
    original = batch._chunk_score

    def paused(job, chunk, loaded):
        if chunk.index == 1 and not marker.exists():
            marker.write_text(str(os.getpid()))
            time.sleep(300)
        return original(job, chunk, loaded)

    batch._chunk_score = paused
