"""Batch jobs in real Celery worker processes on a real broker: two workers sharing a job's
chunks, a chunk whose process is SIGKILLed (redelivered, counted once), and a worker killed
whole (its job reaped with a reason, then resumed by another worker)."""

from __future__ import annotations

import io
import os
import signal
import time
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from celery import Celery
from kombu import Connection

from backups.services import stalled_jobs_reap
from mlregistry import services
from mlregistry.models import Stage
from predictions import batch
from predictions.models import BatchChunk, BatchJob, BatchStatus
from tests import factories, live
from tests.backups.test_worker import Worker

pytestmark = [
    pytest.mark.worker,
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.storage,
]


@pytest.fixture
def broker():
    url = live.broker_url()
    if url is None:
        pytest.skip("no broker answers: set CELERY_TEST_BROKER_URL or start Redis")
    queue = f"test-batch-{uuid.uuid4().hex[:10]}"
    publisher = Celery("tests", broker=url, set_as_current=False)
    yield url, queue, publisher
    try:
        with Connection(url, connect_timeout=2) as conn:
            conn.default_channel.queue_delete(queue)
    except Exception:  # noqa: S110 - a queue left behind is harmless
        pass


@pytest.fixture
def worker(tmp_path, broker):
    url, queue, _ = broker
    worker = Worker(tmp_path, url, queue)
    worker.env["BATCH_QUEUE"] = queue
    yield worker
    worker.stop()


@pytest.fixture
def job(db) -> BatchJob:
    """A job over 3 chunks of 50 iris rows, scored by a model trained in the test."""
    model = factories.registered_model_create("iris")
    version = factories.version_create(model)
    services.model_version_transition(version=version, stage=Stage.PRODUCTION, actor="tests")
    x, _ = factories.iris_frame()
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(x, preserve_index=False), sink, row_group_size=50)
    sink.seek(0)
    return batch.batch_job_create(
        model=model, actor="tests", upload=sink, chunk_rows=50, enqueue=False
    )


def _state(job: BatchJob) -> BatchJob:
    return BatchJob.objects.get(pk=job.pk)


def _output_rows(job: BatchJob) -> list[int]:
    with batch.get_artifact_storage().open(job.output_name, "rb") as handle:
        return pq.read_table(io.BytesIO(handle.read()))["row"].to_pylist()


def test_two_workers_score_a_job_end_to_end(worker, broker, job):
    _, queue, publisher = broker
    worker.start()
    worker.start()
    publisher.send_task("predictions.tasks.batch_job_start_task", args=[job.pk], queue=queue)
    done = worker.wait_for(
        lambda: _state(job).status in (BatchStatus.SUCCEEDED, BatchStatus.FAILED) and _state(job),
        "the job to finish",
    )
    assert done.status == BatchStatus.SUCCEEDED, done.error
    assert (done.rows_done, done.rows_failed, done.chunks_done) == (150, 0, 3)
    assert _output_rows(done) == list(range(150))
    assert set(BatchChunk.objects.filter(job=job).values_list("attempts", flat=True)) == {1}


def test_a_chunk_killed_mid_run_is_redelivered_and_counted_once(worker, broker, job):
    _, queue, publisher = broker
    worker.start("tests.predictions.batch_kill_worker")
    publisher.send_task("predictions.tasks.batch_job_start_task", args=[job.pk], queue=queue)
    marker = Path(worker.env["KILL_TEST_MARKER"])
    worker.wait_for(lambda: marker.exists() and marker.read_text(), "the paused chunk")
    # The child scoring chunk 1 dies as under the OOM killer; acks_late keeps the message and
    # the worker hands it to its next child.
    os.kill(int(marker.read_text()), signal.SIGKILL)
    done = worker.wait_for(
        lambda: _state(job).status in (BatchStatus.SUCCEEDED, BatchStatus.FAILED) and _state(job),
        "the redelivered chunk",
    )
    assert done.status == BatchStatus.SUCCEEDED, done.error
    assert (done.rows_done, done.chunks_done) == (150, 3)
    assert BatchChunk.objects.get(job=job, index=1).attempts == 2
    assert _output_rows(done) == list(range(150))


def test_a_dead_worker_s_job_is_reaped_with_a_reason_then_resumed_by_another(
    worker, broker, job, settings
):
    _, queue, publisher = broker
    # Beats every second, stalled after three: the same reaper, on a test's clock.
    worker.env.update({"JOB_HEARTBEAT_SECONDS": "1", "JOB_STALLED_AFTER_SECONDS": "3"})
    settings.JOB_STALLED_AFTER_SECONDS = 3
    first = worker.start("tests.predictions.batch_kill_worker")
    publisher.send_task("predictions.tasks.batch_job_start_task", args=[job.pk], queue=queue)
    marker = Path(worker.env["KILL_TEST_MARKER"])
    worker.wait_for(lambda: marker.exists() and marker.read_text(), "the paused chunk")
    os.killpg(first.pid, signal.SIGKILL)  # the whole worker, as a lost machine
    first.wait()

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not stalled_jobs_reap(actor="tests").get("batch"):
        time.sleep(0.5)
    lost = _state(job)
    assert (lost.status, lost.error_type) == (BatchStatus.FAILED, "worker_lost")
    assert "no heartbeat" in lost.error

    batch.batch_job_resume(job=lost, actor="tests")
    worker.start()
    publisher.send_task("predictions.tasks.batch_job_start_task", args=[job.pk], queue=queue)
    done = worker.wait_for(
        lambda: _state(job).status == BatchStatus.SUCCEEDED and _state(job), "the resumed job"
    )
    assert (done.rows_done, done.chunks_done, done.rows_failed) == (150, 3, 0)
    assert BatchChunk.objects.get(job=job, index=0).attempts == 1  # kept, not run again
    assert BatchChunk.objects.get(job=job, index=1).attempts == 2
    assert _output_rows(done) == list(range(150))
    frame = pd.DataFrame({"row": _output_rows(done)})
    assert not frame["row"].duplicated().any()


def test_the_embedded_defaults_join_the_chord_without_a_server(tmp_path, job):
    """`make run`'s setup: the folder broker and Celery's file result backend, where the
    chord's join is Celery's polling unlock task rather than Redis's counter."""
    folders = tmp_path / "var" / "celery"
    # The default queue and the batch queue, as a worker started with no -Q consumes them.
    worker = Worker(tmp_path, "filesystem://localhost//", "celery,batch")
    for name in ("CELERY_RESULT_BACKEND", "BATCH_QUEUE", "REDIS_URL"):
        worker.env.pop(name, None)
    publisher = Celery(
        "tests",
        broker="filesystem://localhost//",
        broker_transport_options={
            "data_folder_in": str(folders / "queue"),
            "data_folder_out": str(folders / "queue"),
            "processed_folder": str(folders / "processed"),
            "control_folder": str(folders / "control"),
            "store_processed": False,
        },
        set_as_current=False,
    )
    for name in ("queue", "processed", "control"):
        (folders / name).mkdir(parents=True, exist_ok=True)
    try:
        worker.start()
        publisher.send_task("predictions.tasks.batch_job_start_task", args=[job.pk])
        done = worker.wait_for(
            lambda: (
                _state(job).status in (BatchStatus.SUCCEEDED, BatchStatus.FAILED) and _state(job)
            ),
            "the job to finish",
        )
    finally:
        worker.stop()
    assert done.status == BatchStatus.SUCCEEDED, done.error
    # Every chunk checked the blocks it read: the finish did not read the input again.
    assert set(BatchChunk.objects.filter(job=done).values_list("verified", flat=True)) == {True}
    assert _output_rows(done) == list(range(150))
    assert any((folders / "results").iterdir())  # the members reported in the folder
