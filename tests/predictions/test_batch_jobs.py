"""Batch scoring jobs in process: planning, chunks, validation, errors, finish, cancel, prune.

The tasks run eagerly here (each chunk a task call in this process); tests/predictions/
test_batch_worker.py runs them in real worker processes."""

from __future__ import annotations

import hashlib
import io
import time
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.utils import timezone

from config.celery import app as celery_app
from config.dispatch import Sending
from config.errors import ConflictError, ValidationFailed
from mlregistry import artifacts, services
from mlregistry.models import AuditEvent, Stage
from predictions import batch
from predictions.models import BatchChunk, BatchJob, BatchStatus
from tests import factories
from tests.storage import store_read, store_write

NAMES = factories.IRIS_FEATURES

pytestmark = pytest.mark.storage


@pytest.fixture
def eager():
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = False


@pytest.fixture
def iris_prod(db):
    model = factories.registered_model_create("iris")
    version = factories.version_create(model)
    services.model_version_transition(version=version, stage=Stage.PRODUCTION, actor="tests")
    return model


def _frame(rows: int = 300) -> pd.DataFrame:
    x, _ = factories.iris_frame()
    return pd.concat([x] * (rows // len(x) + 1), ignore_index=True).head(rows)


def _parquet(frame: pd.DataFrame, *, row_group_size: int = 50) -> io.BytesIO:
    sink = io.BytesIO()
    pq.write_table(
        pa.Table.from_pandas(frame, preserve_index=False), sink, row_group_size=row_group_size
    )
    sink.seek(0)
    sink.name = "rows.parquet"
    return sink


def _csv(frame: pd.DataFrame) -> io.BytesIO:
    data = io.BytesIO(frame.to_csv(index=False).encode())
    data.name = "rows.csv"
    return data


def _run(job: BatchJob, django_capture_on_commit_callbacks=None) -> BatchJob:
    """Runs every task of the job's chord in this process, in an order workers may: the
    header (the chunks), then the body."""
    pending = batch.batch_job_start(job_id=job.pk) or []
    for index in pending:
        batch.batch_chunk_run(job_id=job.pk, index=index)
    batch.batch_job_finish(job_id=job.pk)
    job.refresh_from_db()
    return job


def _planning_fails(job: BatchJob) -> tuple[str, str]:
    """(status, error_type) of a job whose planning (staging, the footer) refuses it: nothing
    is left to send."""
    assert batch.batch_job_start(job_id=job.pk) is None
    job.refresh_from_db()
    return job.status, job.error_type


def _read(name: str, file_format: str) -> pd.DataFrame:
    storage = batch.get_artifact_storage()
    with storage.open(name, "rb") as handle:
        data = handle.read()
    if file_format == "parquet":
        return pq.read_table(io.BytesIO(data)).to_pandas()
    return pd.read_csv(io.BytesIO(data))


def _encodings(name: str) -> dict[str, tuple[set[str], str]]:
    """{column: (its data pages' encodings, compression)} of a stored Parquet file, as its
    footer says (the levels' RLE left out)."""
    with batch.get_artifact_storage().open(name, "rb") as handle:
        meta = pq.ParquetFile(io.BytesIO(handle.read())).metadata
    found: dict[str, tuple[set[str], str]] = {}
    for i in range(meta.num_columns):
        column = meta.row_group(0).column(i)
        encodings = set(column.encodings) - {"RLE"}
        found[column.path_in_schema] = (encodings, column.compression)
    return found


def test_parquet_job_scores_every_row_as_serving_does(
    iris_prod, django_capture_on_commit_callbacks
):
    frame = _frame(300)
    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(frame), chunk_rows=100, enqueue=False
    )
    job = _run(job, django_capture_on_commit_callbacks)
    assert job.status == BatchStatus.SUCCEEDED, job.error
    assert (job.rows_total, job.rows_done, job.rows_failed) == (300, 300, 0)
    assert job.chunks_total == 3
    out = _read(job.output_name, "parquet")
    assert list(out.columns) == [
        "row",
        "prediction",
        "confidence",
        "probability_0",
        "probability_1",
        "probability_2",
        "version",
    ]
    assert out["row"].tolist() == list(range(300))
    estimator = batch.model_cache.get(batch.version_info(job.version), model_name="iris").estimator
    assert out["prediction"].tolist() == estimator.predict(frame.to_numpy()).tolist()
    np.testing.assert_allclose(
        out[["probability_0", "probability_1", "probability_2"]].to_numpy(),
        estimator.predict_proba(frame.to_numpy()),
    )
    assert (out["version"] == 1).all()
    # Integers delta-packed (consecutive rows and one version take next to nothing), the
    # probabilities plain: no dictionary tried on every column, no compression that gains
    # nothing on them.
    encodings = _encodings(job.output_name)
    for column in ("row", "prediction", "version"):
        assert encodings[column] == ({"DELTA_BINARY_PACKED"}, "UNCOMPRESSED"), column
    for column in ("confidence", "probability_0"):
        assert encodings[column] == ({"PLAIN"}, "UNCOMPRESSED"), column
    assert _read(job.errors_name, "csv").empty
    assert AuditEvent.objects.filter(object_type="predictions.batchjob", verb="finish").exists()


def test_csv_job_reports_invalid_rows_with_row_numbers_and_reasons(
    iris_prod, django_capture_on_commit_callbacks
):
    frame = _frame(200).astype(object)
    frame.loc[3, "sepal_length"] = "abc"
    frame.loc[7, "petal_width"] = None
    frame.loc[150, "sepal_width"] = "inf"
    job = batch.batch_job_create(
        model=iris_prod,
        actor="tests",
        upload=_csv(frame),
        chunk_rows=64,
        output_format="csv",
        enqueue=False,
    )
    job = _run(job, django_capture_on_commit_callbacks)
    assert job.status == BatchStatus.SUCCEEDED, job.error
    assert (job.rows_total, job.rows_done, job.rows_failed) == (200, 200, 3)
    assert job.chunks_total == 4
    out = _read(job.output_name, "csv")
    assert len(out) == 197
    assert {3, 7, 150}.isdisjoint(out["row"])
    assert out["row"].is_monotonic_increasing
    errors = _read(job.errors_name, "csv")
    assert errors.to_dict("records") == [
        {"row": 3, "field": "sepal_length", "reason": "must be a number"},
        {"row": 7, "field": "petal_width", "reason": "must not be null"},
        {
            "row": 150,
            "field": "sepal_width",
            "reason": "must be a finite number (not NaN or Infinity)",
        },
    ]


def test_schema_bounds_and_integers_are_checked_as_the_predict_api_does(db):
    model = factories.registered_model_create("bounded")
    schema = [{"name": n, "type": "float", "min": 0, "max": 10} for n in NAMES[:3]] + [
        {"name": NAMES[3], "type": "integer", "required": False}
    ]
    version = services.model_version_create(
        model=model,
        artifact=io.BytesIO(factories.iris_classifier_bytes()),
        actor="tests",
        input_schema=schema,
    )
    frame = _frame(6).astype(object)
    frame[NAMES[3]] = [1, 2, 2.5, None, 1, 0]
    frame.loc[0, NAMES[0]] = 11.0
    frame.loc[4, NAMES[1]] = True
    job = batch.batch_job_create(
        model=model,
        actor="tests",
        upload=_csv(frame),
        version=version.version,
        max_error_share=1,
        enqueue=False,
    )
    job = _run(job)
    errors = _read(job.errors_name, "csv")
    assert errors.to_dict("records") == [
        {"row": 0, "field": NAMES[0], "reason": "must be between 0 and 10"},
        {"row": 2, "field": NAMES[3], "reason": "must be an integer"},
        # An absent optional value is valid input, but this model has no answer for it.
        {"row": 3, "field": "prediction", "reason": "the model's answer is not a finite number"},
        {"row": 4, "field": NAMES[1], "reason": "must be a number"},
    ]
    assert job.rows_failed == 4


def test_job_fails_with_a_clear_message_past_its_error_share(
    iris_prod, django_capture_on_commit_callbacks
):
    frame = _frame(100).astype(object)
    frame.loc[:30, "sepal_length"] = "x"
    job = batch.batch_job_create(
        model=iris_prod,
        actor="tests",
        upload=_csv(frame),
        chunk_rows=50,
        max_error_share=0.2,
        enqueue=False,
    )
    job = _run(job, django_capture_on_commit_callbacks)
    assert job.status == BatchStatus.FAILED
    assert job.error_type == "too_many_invalid_rows"
    assert "31 of the input's 100 rows are invalid" in job.error
    assert "20%" in job.error
    assert job.output_name == ""


def test_a_retried_chunk_rewrites_its_part_and_counts_once(
    iris_prod, django_capture_on_commit_callbacks
):
    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(150)), chunk_rows=50, enqueue=False
    )
    indexes = batch.batch_job_start(job_id=job.pk)
    assert indexes == [0, 1, 2]
    assert batch.batch_chunk_run(job_id=job.pk, index=0) == "done"
    # A redelivery of a chunk that finished: skipped, nothing counted twice.
    assert batch.batch_chunk_run(job_id=job.pk, index=0) == "done"
    # A chunk whose first attempt died half-way (status running, a stale part on disk).
    BatchChunk.objects.filter(job=job, index=1).update(status="running", attempts=1)
    storage = batch.get_artifact_storage()
    stale = batch._part_name(job, 1, "output")
    storage.save(stale, batch.ContentFile(b"half a part"))
    assert batch.batch_chunk_run(job_id=job.pk, index=1) == "done"
    assert batch.batch_chunk_run(job_id=job.pk, index=2) == "done"
    assert BatchChunk.objects.get(job=job, index=1).attempts == 2
    job = BatchJob.objects.get(pk=job.pk)
    assert (job.rows_done, job.chunks_done) == (150, 3)
    job = batch.batch_job_finish(job_id=job.pk)
    assert job.status == BatchStatus.SUCCEEDED
    assert _read(job.output_name, "parquet")["row"].tolist() == list(range(150))
    # A second finish (a redelivered message) changes nothing.
    assert batch.batch_job_finish(job_id=job.pk).output_name == job.output_name


def test_cancel_stops_the_chunks_not_yet_run_and_is_audited(iris_prod, staff_user):
    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(150)), chunk_rows=50, enqueue=False
    )
    batch.batch_job_start(job_id=job.pk)
    batch.batch_chunk_run(job_id=job.pk, index=0)
    job = batch.batch_job_cancel(job=job, actor=staff_user)
    assert job.status == BatchStatus.CANCELLED
    assert batch.batch_chunk_run(job_id=job.pk, index=1) == "skipped"
    job.refresh_from_db()
    assert job.rows_done == 50
    event = AuditEvent.objects.get(object_type="predictions.batchjob", verb="cancel")
    assert event.actor_name == staff_user.username
    assert event.changes == {"status": ["running", "cancelled"]}
    with pytest.raises(ConflictError):
        batch.batch_job_cancel(job=job, actor=staff_user)
    with pytest.raises(ConflictError):
        batch.batch_job_resume(job=job, actor=staff_user)


def test_a_chunk_running_when_the_job_is_cancelled_is_discarded(iris_prod):
    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(100)), chunk_rows=50, enqueue=False
    )
    batch.batch_job_start(job_id=job.pk)
    BatchJob.objects.filter(pk=job.pk).update(status=BatchStatus.CANCELLED)
    assert batch._chunk_done(job.pk, 0, 0, 0.1, verified=True) == "discarded"


def test_a_job_whose_workers_stopped_is_reaped_then_resumed_where_it_stopped(
    iris_prod, settings, django_capture_on_commit_callbacks
):
    from backups.services import stalled_jobs_reap

    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(150)), chunk_rows=50, enqueue=False
    )
    batch.batch_job_start(job_id=job.pk)
    batch.batch_chunk_run(job_id=job.pk, index=0)
    # The worker running chunk 1 is killed: its chunk stays "running", its beats stop.
    BatchChunk.objects.filter(job=job, index=1).update(status="running", attempts=1)
    long_ago = timezone.now() - timedelta(seconds=settings.JOB_STALLED_AFTER_SECONDS + 5)
    BatchJob.objects.filter(pk=job.pk).update(heartbeat_at=long_ago)
    assert stalled_jobs_reap(actor="tests")["batch"] == [job.pk]
    job.refresh_from_db()
    assert (job.status, job.error_type) == (BatchStatus.FAILED, "worker_lost")
    assert "no heartbeat" in job.error
    assert "finished ones are kept" in job.error  # not "the next run starts afresh"
    event = AuditEvent.objects.get(object_type="predictions.batchjob", verb="fail")
    assert event.changes == {"status": ["running", "failed"], "error_type": ["", "worker_lost"]}
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        job = batch.batch_job_resume(job=job, actor="tests")
    assert len(callbacks) == 1
    assert job.status == BatchStatus.RUNNING
    assert batch.batch_job_start(job_id=job.pk) == [1, 2]
    job = _run(job, django_capture_on_commit_callbacks)
    assert job.status == BatchStatus.SUCCEEDED
    assert (job.rows_done, job.rows_failed) == (150, 0)
    assert BatchChunk.objects.get(job=job, index=0).attempts == 1


def test_a_dataset_file_is_scored_and_sql_datasets_are_refused(
    iris_prod, django_capture_on_commit_callbacks
):
    dataset = factories.iris_dataset_create("iris-data")
    job = batch.batch_job_create(model=iris_prod, actor="tests", dataset=dataset.pk, enqueue=False)
    assert job.input_name == dataset.file.name
    job = _run(job, django_capture_on_commit_callbacks)
    assert job.status == BatchStatus.SUCCEEDED
    assert job.rows_done == 150
    with pytest.raises(ValidationFailed) as refused:
        batch.batch_job_create(model=iris_prod, actor="tests", dataset=99999, enqueue=False)
    assert "dataset" in refused.value.fields


@pytest.fixture
def small_blocks(monkeypatch):
    """Uploads verified in blocks of 256 bytes, so a file of a few kB spans many (the rule is
    the same at the 1 MiB of a real file)."""
    monkeypatch.setattr(artifacts, "BLOCK_MIN", 256)


def _flipped(data: bytes, offset: int) -> bytes:
    changed = bytearray(data)
    changed[offset] ^= 0xFF
    return bytes(changed)


def _row_group_offset(data: bytes, index: int) -> int:
    """Where row group `index`'s first column chunk starts in a Parquet file."""
    meta = pq.ParquetFile(io.BytesIO(data)).metadata
    return meta.row_group(index).column(0).data_page_offset


def test_a_chunk_scores_only_verified_bytes_of_an_uploaded_parquet_input(iris_prod, small_blocks):
    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(150)), chunk_rows=50, enqueue=False
    )
    data = store_read(job.input_name)
    assert (job.parquet_size, job.parquet_block_size) == (len(data), 256)
    assert bytes(job.parquet_block_sha256) == b"".join(
        hashlib.sha256(data[i : i + 256]).digest() for i in range(0, len(data), 256)
    )
    storage = batch.get_artifact_storage()
    assert batch.batch_job_start(job_id=job.pk) == [0, 1, 2]
    assert batch.batch_chunk_run(job_id=job.pk, index=0) == "done"
    # One byte of the second chunk's rows changes while the job runs: the file is still
    # readable, but not the one submitted. The chunk that reads it scores nothing.
    store_write(job.input_name, _flipped(data, _row_group_offset(data, 1) + 8))
    assert batch.batch_chunk_run(job_id=job.pk, index=1) == "failed"
    job.refresh_from_db()
    assert (job.status, job.error_type) == (BatchStatus.FAILED, "input_integrity")
    assert job.error.startswith("Chunk 1: ") and job.input_name in job.error
    assert not storage.exists(batch._part_name(job, 1, "output"))
    assert batch.batch_job_finish(job_id=job.pk).output_name == ""
    assert not storage.exists(f"batch-jobs/{job.pk}/output.parquet")


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda data: _flipped(data, len(data) - 12), id="footer-changed"),
        pytest.param(lambda data: data[:-100], id="cut-short"),
        pytest.param(lambda data: data[: len(data) // 2], id="cut-in-half"),
    ],
)
def test_planning_reads_the_footer_of_the_submitted_bytes_only(iris_prod, small_blocks, tamper):
    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(150)), chunk_rows=50, enqueue=False
    )
    store_write(job.input_name, tamper(store_read(job.input_name)))
    assert _planning_fails(job) == (BatchStatus.FAILED, "input_integrity")
    assert not BatchChunk.objects.filter(job=job).exists()


def test_bytes_appended_to_an_uploaded_input_are_never_read(iris_prod, small_blocks):
    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(150)), chunk_rows=50, enqueue=False
    )
    # A valid Parquet file of other rows glued on: a reader of the whole file would find its
    # footer at the new end and score 7 rows.
    store_write(job.input_name, store_read(job.input_name) + _parquet(_frame(7)).getvalue())
    job = _run(job)
    assert (job.status, job.rows_done) == (BatchStatus.SUCCEEDED, 150)
    assert _read(job.output_name, "parquet")["row"].tolist() == list(range(150))


def _parquet_dataset(name: str = "iris-parquet"):
    from quality import training

    x, y = factories.iris_frame()
    return training.dataset_create(
        name=name,
        actor="tests",
        target_column="species",
        feature_columns=factories.IRIS_FEATURES,
        file=_parquet(x.assign(species=y)),
        file_format="parquet",
    )


def test_a_parquet_dataset_is_checked_block_by_block_as_an_upload_is(iris_prod, small_blocks):
    dataset = _parquet_dataset()
    data = store_read(dataset.file.name)
    assert (dataset.file_size, dataset.file_block_size) == (len(data), 256)
    job = batch.batch_job_create(
        model=iris_prod, actor="tests", dataset=dataset.pk, chunk_rows=50, enqueue=False
    )
    assert (job.parquet_size, job.parquet_block_size) == (len(data), 256)
    assert bytes(job.parquet_block_sha256) == bytes(dataset.file_block_sha256)
    assert batch.batch_job_start(job_id=job.pk) == [0, 1, 2]
    assert batch.batch_chunk_run(job_id=job.pk, index=0) == "done"
    # (Changed after chunk 0: pyarrow reads the last 64 KiB to find a footer, all of this file.)
    store_write(job.input_name, _flipped(data, _row_group_offset(data, 2) + 8))
    assert batch.batch_chunk_run(job_id=job.pk, index=2) == "failed"
    job.refresh_from_db()
    assert (job.status, job.error_type) == (BatchStatus.FAILED, "input_integrity")
    # The dataset's audit row names its digest, not the binary block digests.
    event = AuditEvent.objects.get(object_type="quality.dataset", verb="create")
    assert event.changes["file_sha256"] == [None, dataset.file_sha256]
    assert "file_block_sha256" not in event.changes


def test_a_tampered_dataset_without_block_digests_fails_the_finish(iris_prod):
    from quality.models import Dataset

    dataset = _parquet_dataset()
    # As a dataset registered before files had block digests: hashed whole by the finish.
    Dataset.objects.filter(pk=dataset.pk).update(file_block_size=None, file_block_sha256=b"")
    job = batch.batch_job_create(
        model=iris_prod, actor="tests", dataset=dataset.pk, chunk_rows=50, enqueue=False
    )
    assert job.parquet_block_size is None
    storage = batch.get_artifact_storage()
    pending = batch.batch_job_start(job_id=job.pk)
    for index in pending:
        assert batch.batch_chunk_run(job_id=job.pk, index=index) == "done"
    # Every chunk is scored; then one byte of the input changes (still a readable file, not
    # the one submitted). The finish checks the input while it merges and publishes nothing.
    data = store_read(job.input_name)
    store_write(job.input_name, _flipped(data, _row_group_offset(data, 1) + 8))
    job = batch.batch_job_finish(job_id=job.pk)
    assert (job.status, job.error_type) == (BatchStatus.FAILED, "input_integrity")
    assert job.output_name == ""
    assert not storage.exists(f"batch-jobs/{job.pk}/output.parquet")
    assert job.input_verified_at is None


def test_the_finish_does_not_hash_an_input_every_chunk_checked_unless_one_did_not(iris_prod):
    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(150)), chunk_rows=50, enqueue=False
    )
    for index in batch.batch_job_start(job_id=job.pk):
        assert batch.batch_chunk_run(job_id=job.pk, index=index) == "done"
    assert set(BatchChunk.objects.filter(job=job).values_list("verified", flat=True)) == {True}
    # Changed once every chunk has scored checked bytes: the output is of the submitted file,
    # and the finish does not read it again.
    data = store_read(job.input_name)
    store_write(job.input_name, _flipped(data, _row_group_offset(data, 1) + 8))
    assert batch.batch_job_finish(job_id=job.pk).status == BatchStatus.SUCCEEDED

    # Mid-upgrade, a worker of the previous release scores a chunk without checking it.
    again = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(151)), chunk_rows=50, enqueue=False
    )
    for index in batch.batch_job_start(job_id=again.pk):
        assert batch.batch_chunk_run(job_id=again.pk, index=index) == "done"
    BatchChunk.objects.filter(job=again, index=1).update(verified=False)
    data = store_read(again.input_name)
    store_write(again.input_name, _flipped(data, _row_group_offset(data, 1) + 8))
    again = batch.batch_job_finish(job_id=again.pk)
    assert (again.status, again.error_type) == (BatchStatus.FAILED, "input_integrity")

    # The same for a CSV: the finish checks the staged copy those chunks read, not the CSV.
    csv = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_csv(_frame(150)), chunk_rows=50, enqueue=False
    )
    for index in batch.batch_job_start(job_id=csv.pk):
        assert batch.batch_chunk_run(job_id=csv.pk, index=index) == "done"
    BatchChunk.objects.filter(job=csv, index=2).update(verified=False)
    staged = store_read(batch._staged_name(csv))
    store_write(batch._staged_name(csv), _flipped(staged, _row_group_offset(staged, 2) + 8))
    csv = batch.batch_job_finish(job_id=csv.pk)
    assert (csv.status, csv.error_type) == (BatchStatus.FAILED, "input_integrity")
    assert batch._staged_name(csv) in csv.error


def test_rows_written_without_the_new_columns_take_their_database_defaults(iris_prod):
    """A web process or worker of the previous release, mid-upgrade, inserts rows that name
    none of the new columns: the database fills them in (no block digests, not checked)."""
    from django.db import connection

    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(150)), chunk_rows=50, enqueue=False
    )
    batch.batch_job_start(job_id=job.pk)
    new = {"parquet_size", "parquet_block_size", "parquet_block_sha256", "verified"}
    q = connection.ops.quote_name

    def copy_row(model, pk, **replaced):
        """Copies row `pk` naming only the columns the previous release knew."""
        fields = [f for f in model._meta.concrete_fields if not f.primary_key and f.name not in new]
        columns = ", ".join(q(f.column) for f in fields)
        values = ", ".join("%s" if f.column in replaced else q(f.column) for f in fields)
        params = [replaced[f.column] for f in fields if f.column in replaced]
        table = q(model._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} ({columns}) SELECT {values} FROM {table} WHERE id = %s",  # noqa: S608
                [*params, pk],
            )
        return model.objects.order_by("-pk").first()

    copies = {BatchJob: copy_row(BatchJob, job.pk)}
    chunk = BatchChunk.objects.get(job=job, index=0)
    copies[BatchChunk] = copy_row(BatchChunk, chunk.pk, job_id=copies[BatchJob].pk)
    copy = copies[BatchJob]
    assert (copy.parquet_size, copy.parquet_block_size, bytes(copy.parquet_block_sha256)) == (
        None,
        None,
        b"",
    )
    assert copies[BatchChunk].verified is False


def test_a_staged_csv_is_checked_block_by_block_as_chunks_read_it(iris_prod, small_blocks):
    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_csv(_frame(150)), chunk_rows=50, enqueue=False
    )
    assert job.parquet_block_size is None  # a CSV's digests are of the file planning stages
    assert batch.batch_job_start(job_id=job.pk) == [0, 1, 2]
    job.refresh_from_db()
    staged = store_read(batch._staged_name(job))
    assert (job.parquet_size, job.parquet_block_size) == (len(staged), 256)
    assert batch.batch_chunk_run(job_id=job.pk, index=0) == "done"
    store_write(batch._staged_name(job), _flipped(staged, _row_group_offset(staged, 1) + 8))
    assert batch.batch_chunk_run(job_id=job.pk, index=1) == "failed"
    job.refresh_from_db()
    assert (job.status, job.error_type) == (BatchStatus.FAILED, "input_integrity")
    assert batch._staged_name(job) in job.error


class _RangeReads:
    """A file read by positioned reads, as pyarrow's S3 file is, each taking `latency` seconds
    (latency injected on purpose): records how many were in flight at once."""

    def __init__(self, data: bytes, latency: float = 0.0):
        self.data, self.latency = data, latency
        self.reads: list[tuple[int, int]] = []
        self.in_flight = self.most_in_flight = 0
        self.frozen = False

    def read_at(self, nbytes: int, offset: int) -> bytes:
        assert not self.frozen, f"a read after the prefetch: {nbytes} bytes at {offset}"
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.reads.append((offset, nbytes))
        time.sleep(self.latency)
        self.in_flight -= 1
        return self.data[offset : offset + nbytes]


def _verified(data: bytes, block: int) -> BatchJob:
    """An unsaved job whose recorded input is `data`, in blocks of `block` bytes."""
    digests = b"".join(
        hashlib.sha256(data[i : i + block]).digest() for i in range(0, len(data), block)
    )
    return BatchJob(
        input_name="in.parquet",
        input_format="parquet",
        parquet_size=len(data),
        parquet_block_size=block,
        parquet_block_sha256=digests,
    )


@pytest.mark.parametrize("extra", [-1, 0, 1, 100, 3 * 64 + 5])
@pytest.mark.parametrize("kind", ["positioned", "seek-read", "local-file"])
def test_a_verified_input_reads_as_the_file_at_every_block_edge(tmp_path, kind, extra):
    block = 64
    data = bytes(np.random.default_rng(extra + 2).integers(0, 256, 3 * block + extra, np.uint8))
    job = _verified(data, block)
    path = tmp_path / "in.parquet"
    path.write_bytes(data)
    with open(path, "rb") as handle:
        source = {
            "positioned": _RangeReads(data),
            "seek-read": io.BytesIO(data),
            "local-file": handle,
        }[kind]
        reader = batch._VerifiedInput(source, job)
        assert reader.seek(0, io.SEEK_END) == len(data)
        for start in range(0, len(data) + 2):
            for size in (0, 1, block - 1, block, block + 1, 2 * block + 3, 10**12, -1):
                reader.seek(start)
                expected = data[start:] if size < 0 else data[start : start + size]
                assert bytes(reader.read(size)) == expected, (start, size)
        reader.seek(block - 2)
        into = bytearray(5)
        assert (reader.readinto(into), bytes(into)) == (5, data[block - 2 : block + 3])
        with pytest.raises(ValueError):
            reader.seek(-1)
        with pytest.raises(ValueError):
            reader.seek(0, 7)


def test_a_verified_input_prefetches_column_ranges_at_once_and_serves_them_checked():
    data = _parquet(_frame(3000), row_group_size=500).getvalue()
    block = 256
    job = _verified(data, block)
    # Several column chunks of two row groups, far apart: fetched side by side, each in one
    # positioned read whatever the number of blocks it spans.
    meta = pq.ParquetFile(io.BytesIO(data)).metadata
    ranges = batch._column_ranges(meta, [1, 4], ["sepal_length", "petal_width"])
    assert len(ranges) == 4
    source = _RangeReads(data, latency=0.05)
    reader = batch._VerifiedInput(source, job)
    reader.prefetch(ranges)
    assert source.most_in_flight > 1
    fetched = len(source.reads)
    assert fetched <= len(ranges)
    for start, end in ranges:
        reader.seek(start)
        assert bytes(reader.read(end - start)) == data[start:end]
    assert len(source.reads) == fetched  # served from what was fetched
    # A block that differs in what a prefetch reads fails before any byte is handed over.
    start = ranges[2][0]
    changed = _RangeReads(_flipped(data, start + 3))
    with pytest.raises(batch.BatchJobFailed) as failed:
        batch._VerifiedInput(changed, job).prefetch(ranges)
    assert failed.value.problem == "input_integrity"
    # The whole file read by pyarrow through it, from a local file: the same table.
    reader = batch._VerifiedInput(io.BytesIO(data), job)
    expected = pq.read_table(io.BytesIO(data))
    assert pq.ParquetFile(reader, pre_buffer=True).read().equals(expected)


def test_pyarrow_reads_a_chunks_rows_from_the_blocks_fetched_for_it(monkeypatch):
    """Past the 64 KiB pyarrow reads to find the footer, a chunk's rows come from what
    `prefetch` fetched and checked: a read of the source after it fails the test (a spy on
    prefetch, added for that)."""
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(rng.normal(size=(40_000, 4)), columns=factories.IRIS_FEATURES)
    data = _parquet(frame, row_group_size=5_000).getvalue()
    assert len(data) > 16 * artifacts.BLOCK_MIN
    job = _verified(data, artifacts.BLOCK_MIN)
    source = _RangeReads(data)
    fetched = []
    prefetch = batch._VerifiedInput.prefetch

    def prefetch_then_freeze(reader, ranges):
        prefetch(reader, ranges)
        fetched.extend(source.reads)
        source.frozen = True

    monkeypatch.setattr(batch._VerifiedInput, "prefetch", prefetch_then_freeze)
    names = ["petal_width", "sepal_length", "missing"]
    table = batch._rows_from(batch._VerifiedInput(source, job), 12_000, 5_000, names)
    expected = frame.iloc[12_000:17_000][["petal_width", "sepal_length"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(table.to_pandas()[["petal_width", "sepal_length"]], expected)
    assert table["missing"].null_count == 5_000
    assert fetched and len(source.reads) == len(fetched)
    # Two row groups' two columns, far less than the file.
    assert sum(size for _, size in source.reads) < len(data) / 3


def test_block_digests_do_not_depend_on_how_the_stream_is_cut():
    whole = bytes(range(256)) * 5
    expected = b"".join(hashlib.sha256(whole[i : i + 100]).digest() for i in range(0, 1280, 100))
    for piece in (1, 7, 100, 333, 1280, 4096):
        digests = artifacts.BlockDigests(100)
        for i in range(0, len(whole), piece):
            digests.update(whole[i : i + piece])
        assert digests.digests() == expected
    assert artifacts.BlockDigests(100).digests() == b""
    kib, gib = 1024, 1024**3
    assert artifacts.block_size_for(0) == 64 * kib
    assert artifacts.block_size_for(4096 * 64 * kib) == 64 * kib
    assert artifacts.block_size_for(4096 * 64 * kib + 1) == 128 * kib
    assert artifacts.block_size_for(2 * gib) == 512 * kib  # BATCH_MAX_INPUT_SIZE by default
    assert artifacts.block_size_for(64 * gib) == 16 * 1024 * kib


def test_a_tampered_csv_input_is_found_while_it_is_staged(iris_prod):
    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_csv(_frame(50)), enqueue=False
    )
    store_write(job.input_name, store_read(job.input_name) + b"1,2,3,4\n")
    assert _planning_fails(job) == (BatchStatus.FAILED, "input_integrity")


def test_a_missing_input_fails_the_job(iris_prod):
    for upload in (_parquet(_frame(20)), _csv(_frame(20))):
        job = batch.batch_job_create(model=iris_prod, actor="tests", upload=upload, enqueue=False)
        batch.get_artifact_storage().delete(job.input_name)
        assert batch.batch_job_start(job_id=job.pk) is None
        job.refresh_from_db()
        assert (job.status, job.error_type) == (BatchStatus.FAILED, "input_missing")


def test_regression_output_has_no_probabilities(db, django_capture_on_commit_callbacks):
    from sklearn.datasets import load_diabetes

    model = factories.registered_model_create("diabetes", task="regression")
    version = services.model_version_create(
        model=model, artifact=io.BytesIO(factories.diabetes_regressor_bytes()), actor="tests"
    )
    frame = load_diabetes(as_frame=True).data.head(40)
    job = batch.batch_job_create(
        model=model, actor="tests", upload=_parquet(frame), version=version.version, enqueue=False
    )
    job = _run(job, django_capture_on_commit_callbacks)
    out = _read(job.output_name, "parquet")
    assert list(out.columns) == ["row", "prediction", "confidence", "version"]
    assert out["confidence"].isna().all()


def test_prune_deletes_old_finished_jobs_and_their_files_only(
    iris_prod, django_capture_on_commit_callbacks
):
    upload = _parquet(_frame(50))
    old = _run(
        batch.batch_job_create(model=iris_prod, actor="tests", upload=upload, enqueue=False),
        django_capture_on_commit_callbacks,
    )
    upload.seek(0)
    shared = batch.batch_job_create(model=iris_prod, actor="tests", upload=upload, enqueue=False)
    BatchJob.objects.filter(pk=old.pk).update(finished_at=timezone.now() - timedelta(days=30))
    storage = batch.get_artifact_storage()
    cutoff = timezone.now() - timedelta(days=14)
    assert batch.batch_jobs_prune(older_than=cutoff, dry_run=True) == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert batch.batch_jobs_prune(older_than=cutoff) == 1
    assert not BatchJob.objects.filter(pk=old.pk).exists()
    assert not storage.exists(old.output_name)
    assert storage.exists(shared.input_name)  # still read by a job that stays
    assert AuditEvent.objects.filter(
        object_type="predictions.batchjob", verb="delete", actor_name="job:retention"
    ).exists()


def test_plan_groups_row_groups_up_to_chunk_rows_and_splits_large_ones():
    assert batch._plan([50, 50, 50], 100) == [(0, 100), (100, 50)]
    assert batch._plan([250], 100) == [(0, 100), (100, 100), (200, 50)]
    assert batch._plan([30, 200, 10], 100) == [(0, 30), (30, 100), (130, 100), (230, 10)]
    assert batch._plan([], 100) == []


def test_a_mixed_type_schema_is_validated_and_scored_as_a_frame(
    db, django_capture_on_commit_callbacks
):
    """String and boolean features: the model gets a DataFrame, as the predict path gives it."""
    import skops.io as sio
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    train = pd.DataFrame(
        {
            "colour": ["red", "blue", "red", "green"] * 10,
            "large": [True, False, False, True] * 10,
            "size": [1.0, 2.0, 3.0, 4.0] * 10,
        }
    )
    target = ["a", "b", "a", "b"] * 10
    pipeline = make_pipeline(
        make_column_transformer(
            (OneHotEncoder(handle_unknown="ignore"), ["colour"]), remainder="passthrough"
        ),
        LogisticRegression(),
    ).fit(train, target)
    model = factories.registered_model_create("mixed")
    version = services.model_version_create(
        model=model,
        artifact=io.BytesIO(sio.dumps(pipeline)),
        actor="tests",
        input_schema=[
            {"name": "colour", "type": "string"},
            {"name": "large", "type": "boolean"},
            {"name": "size", "type": "float"},
        ],
    )
    frame = pd.DataFrame(
        {
            "colour": ["red", "blue", None, "green"],
            "large": ["true", "False", "true", "maybe"],
            "size": ["1.5", "2", "3", "4"],
        }
    )
    job = batch.batch_job_create(
        model=model,
        actor="tests",
        upload=_csv(frame),
        version=version.version,
        max_error_share=1,
        enqueue=False,
    )
    job = _run(job, django_capture_on_commit_callbacks)
    assert job.status == BatchStatus.SUCCEEDED, job.error
    out = _read(job.output_name, "parquet")
    assert out["row"].tolist() == [0, 1]
    assert (
        out["prediction"].tolist()
        == pipeline.predict(
            pd.DataFrame({"colour": ["red", "blue"], "large": [True, False], "size": [1.5, 2.0]})
        ).tolist()
    )
    assert {"probability_a", "probability_b"} <= set(out.columns)
    # Text labels go through a dictionary, its pages snappy-compressed.
    assert _encodings(job.output_name)["prediction"] == ({"RLE_DICTIONARY", "PLAIN"}, "SNAPPY")
    errors = _read(job.errors_name, "csv")
    assert errors.to_dict("records") == [
        {"row": 2, "field": "colour", "reason": "must not be null"},
        {"row": 3, "field": "large", "reason": "must be true or false"},
    ]


def test_a_crashing_chunk_fails_the_job_with_its_reason_and_can_be_resumed(
    iris_prod, monkeypatch, django_capture_on_commit_callbacks
):
    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(100)), chunk_rows=50, enqueue=False
    )
    batch.batch_job_start(job_id=job.pk)

    # Fault injected on purpose: the scoring step raises once.
    def broken(*args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(batch, "_chunk_score", broken)
    assert batch.batch_chunk_run(job_id=job.pk, index=0) == "failed"
    job.refresh_from_db()
    assert (job.status, job.error_type) == (BatchStatus.FAILED, "chunk_error")
    assert "disk on fire" in job.error
    monkeypatch.undo()
    batch.batch_job_resume(job=job, actor="tests")
    job = _run(job, django_capture_on_commit_callbacks)
    assert job.status == BatchStatus.SUCCEEDED


def test_an_unreadable_csv_and_an_oversized_input_fail_the_job_or_the_request(iris_prod, settings):
    good = _csv(_frame(10))
    job = batch.batch_job_create(model=iris_prod, actor="tests", upload=good, enqueue=False)
    # Rewritten under the same name with its digest updated: the bytes are verified, then
    # found unreadable (a value that is not UTF-8).
    data = b"sepal_length,sepal_width,petal_length,petal_width\n\xff\xfe,2,3,4\n"
    store_write(job.input_name, data)
    BatchJob.objects.filter(pk=job.pk).update(input_sha256=batch.hashlib.sha256(data).hexdigest())
    assert _planning_fails(job) == (BatchStatus.FAILED, "input_unreadable")

    settings.BATCH_MAX_ROWS = 5
    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(10)), enqueue=False
    )
    assert _planning_fails(job) == (BatchStatus.FAILED, "too_many_rows")

    from config.errors import PayloadTooLarge

    settings.BATCH_MAX_INPUT_SIZE = 1024
    big = _parquet(_frame(300))
    big.size = len(big.getvalue())
    with pytest.raises(PayloadTooLarge):
        batch.batch_job_create(model=iris_prod, actor="tests", upload=big, enqueue=False)


def test_a_queued_job_can_be_resumed_and_a_finished_one_is_left_alone(iris_prod):
    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(10)), enqueue=False
    )
    job = batch.batch_job_resume(job=job, actor="tests")
    assert job.status == BatchStatus.QUEUED
    BatchJob.objects.filter(pk=job.pk).update(status=BatchStatus.SUCCEEDED)
    assert batch.batch_job_start(job_id=job.pk) is None
    assert batch.batch_chunk_run(job_id=job.pk, index=0) == "skipped"
    assert batch._fail(job.pk, problem="x", message="y").status == BatchStatus.SUCCEEDED


def test_a_job_queued_behind_another_is_kept_alive_but_a_dead_chunk_s_job_is_not(
    iris_prod, settings
):
    from backups.services import stalled_jobs_reap

    long_ago = timezone.now() - timedelta(seconds=settings.JOB_STALLED_AFTER_SECONDS + 5)
    first = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(100)), chunk_rows=50, enqueue=False
    )
    waiting = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(60)), chunk_rows=50, enqueue=False
    )
    dead = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(50)), chunk_rows=50, enqueue=False
    )
    for job in (first, waiting, dead):
        batch.batch_job_start(job_id=job.pk)
    # `dead`'s only chunk was taken by a worker that died; `waiting`'s chunks are queued.
    BatchChunk.objects.filter(job=dead).update(status="running", attempts=1)
    BatchJob.objects.filter(pk__in=[waiting.pk, dead.pk]).update(heartbeat_at=long_ago)
    batch.batch_chunk_run(job_id=first.pk, index=0)  # a live worker's chunk
    assert stalled_jobs_reap(actor="tests")["batch"] == [dead.pk]
    assert BatchJob.objects.get(pk=waiting.pk).status == BatchStatus.RUNNING


def test_without_a_result_backend_that_joins_chords_the_job_fails_saying_so(iris_prod):
    from celery.backends.base import DisabledBackend

    from config.celery import app
    from predictions.tasks import batch_job_start_task

    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(100)), chunk_rows=50, enqueue=False
    )
    had = getattr(app._local, "backend", None)
    app._local.backend = DisabledBackend(app)  # Celery's own "no result backend"
    try:
        assert batch_job_start_task.run(job.pk) == 0
    finally:
        if had is None:
            del app._local.backend
        else:
            app._local.backend = had
    job.refresh_from_db()
    assert (job.status, job.error_type) == (BatchStatus.FAILED, "unavailable")
    assert "CELERY_RESULT_BACKEND" in job.error
    assert job.error_type in batch.RESUMABLE_PROBLEMS


@pytest.mark.parametrize("output_format", ["parquet", "csv"])
def test_a_chunk_whose_rows_are_all_invalid_has_the_columns_of_the_others(
    iris_prod, output_format, django_capture_on_commit_callbacks
):
    """A chunk with no valid row scores nothing; its part still has a classifier's columns
    (probabilities, the classes' type), so the merge can put it with the scored ones."""
    frame = _frame(6).astype(object)
    frame.loc[:1, "sepal_length"] = "x"  # all of chunk 0
    job = batch.batch_job_create(
        model=iris_prod,
        actor="tests",
        upload=_csv(frame),
        chunk_rows=2,
        output_format=output_format,
        max_error_share=1,
        enqueue=False,
    )
    job = _run(job, django_capture_on_commit_callbacks)
    assert job.status == BatchStatus.SUCCEEDED, job.error
    out = _read(job.output_name, output_format)
    assert list(out.columns) == [
        "row",
        "prediction",
        "confidence",
        "probability_0",
        "probability_1",
        "probability_2",
        "version",
    ]
    assert out["row"].tolist() == [2, 3, 4, 5]
    assert out.notna().all().all()


def test_a_chunk_whose_worker_dies_on_every_start_fails_the_job_after_job_max_attempts(
    iris_prod, settings
):
    """A chunk that kills its worker each time (out of memory) is redelivered by the broker
    (CELERY_TASK_REJECT_ON_WORKER_LOST); its claims keep the job's heartbeat fresh, so only a
    bound on its starts ends it, as for training jobs and backups."""
    settings.JOB_MAX_ATTEMPTS = 3
    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(100)), chunk_rows=50, enqueue=False
    )
    batch.batch_job_start(job_id=job.pk)
    # Each earlier start of chunk 1 died with its process: left running, no part counted.
    BatchChunk.objects.filter(job=job, index=1).update(status="running", attempts=3)
    assert batch.batch_chunk_run(job_id=job.pk, index=1) == "failed"
    job.refresh_from_db()
    assert (job.status, job.error_type) == (BatchStatus.FAILED, "too_many_attempts")
    assert "Chunk 1 was started 3 times" in job.error
    assert BatchChunk.objects.get(job=job, index=1).attempts == 3  # not started a 4th time
    assert batch.batch_chunk_run(job_id=job.pk, index=0) == "skipped"
    # Resuming would start it again only to lose another worker: a smaller chunk_rows is the
    # way on, in a new job.
    with pytest.raises(ConflictError):
        batch.batch_job_resume(job=job, actor="tests")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_job_resumed_while_retention_runs_is_kept(monkeypatch):
    """Retention lists the old finished jobs, then deletes them one by one (minutes, with their
    files); a job resumed in between is running again and must not go."""
    import threading
    import time

    from django.db import connection, connections, transaction

    model = factories.registered_model_create("iris")
    version = factories.version_create(model)
    services.model_version_transition(version=version, stage=Stage.PRODUCTION, actor="tests")
    job = batch.batch_job_create(
        model=model, actor="tests", upload=_parquet(_frame(20)), enqueue=False
    )
    batch.batch_job_start(job_id=job.pk)
    long_ago = timezone.now() - timedelta(days=30)
    BatchJob.objects.filter(pk=job.pk).update(
        status=BatchStatus.FAILED, error_type="worker_lost", finished_at=long_ago
    )
    # Isolation, not a fault: the resumed job's start message goes to no broker.
    monkeypatch.setattr(batch, "_start_send", lambda job_id: Sending())
    pruned = []

    def prune():
        try:
            cutoff = timezone.now() - timedelta(days=14)
            pruned.append(batch.batch_jobs_prune(older_than=cutoff))
        finally:
            connections.close_all()

    with transaction.atomic():
        batch.batch_job_resume(job=job, actor="tests")  # its row lock is held until commit
        retention = threading.Thread(target=prune)
        retention.start()
        # Commit only once retention has listed the job and waits for its lock.
        deadline = time.monotonic() + 20
        waiting = 0
        while not waiting and time.monotonic() < deadline:
            with connection.cursor() as cursor:
                # A transaction sees one snapshot of pg_stat_activity unless it drops it.
                cursor.execute("SELECT pg_stat_clear_snapshot()")
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                )
                waiting = cursor.fetchone()[0]
            time.sleep(0.05)
        assert waiting, "retention never waited for the job's lock"
    retention.join(timeout=30)
    assert pruned == [0]
    assert BatchJob.objects.get(pk=job.pk).status == BatchStatus.RUNNING
    assert batch.get_artifact_storage().exists(job.input_name)


def test_a_job_whose_finish_waits_behind_another_job_is_kept_alive(iris_prod, settings):
    """Every chunk of `scored` is done; its finish (the chord's body) is queued behind the
    chunks of a longer job, which a live worker is scoring: not a job whose workers died."""
    from backups.services import stalled_jobs_reap

    long_ago = timezone.now() - timedelta(seconds=settings.JOB_STALLED_AFTER_SECONDS + 5)
    scored = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(50)), chunk_rows=50, enqueue=False
    )
    longer = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(100)), chunk_rows=50, enqueue=False
    )
    for job in (scored, longer):
        batch.batch_job_start(job_id=job.pk)
    assert batch.batch_chunk_run(job_id=scored.pk, index=0) == "done"
    BatchJob.objects.filter(pk=scored.pk).update(heartbeat_at=long_ago)
    batch._heartbeats_stamped_at = None  # this worker's last stamp was as long ago
    batch.batch_chunk_run(job_id=longer.pk, index=0)  # a live worker's chunk
    assert stalled_jobs_reap(actor="tests")["batch"] == []
    assert batch.batch_job_finish(job_id=scored.pk).status == BatchStatus.SUCCEEDED


def test_a_finish_that_crashes_fails_the_job_saying_why_and_a_resume_finishes_it(
    iris_prod, monkeypatch
):
    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(100)), chunk_rows=50, enqueue=False
    )
    for index in batch.batch_job_start(job_id=job.pk):
        batch.batch_chunk_run(job_id=job.pk, index=index)

    # Fault injected on purpose: the merge's storage fails once.
    def broken(*args):
        raise OSError("storage unreachable")

    monkeypatch.setattr(batch, "_merge", broken)
    job = batch.batch_job_finish(job_id=job.pk)
    assert (job.status, job.error_type) == (BatchStatus.FAILED, "finish_error")
    assert "storage unreachable" in job.error
    monkeypatch.undo()
    batch.batch_job_resume(job=job, actor="tests")
    assert batch.batch_job_start(job_id=job.pk) == []  # every chunk kept: the finish alone
    job = batch.batch_job_finish(job_id=job.pk)
    assert job.status == BatchStatus.SUCCEEDED
    assert _read(job.output_name, "parquet")["row"].tolist() == list(range(100))


def test_a_chord_that_cannot_be_sent_fails_the_job_resumably(iris_prod, monkeypatch):
    """The broker or the result backend does not answer when the run is sent: the job says so
    at once, instead of staying running with chunks no worker has (which other jobs' chunks
    would keep alive as long as they run)."""
    from celery import canvas
    from kombu.exceptions import OperationalError as BrokerError

    from predictions.tasks import batch_job_start_task

    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(100)), chunk_rows=50, enqueue=False
    )

    # Fault injected on purpose: publishing the chord fails as with the broker down.
    def unreachable(self, *args, **kwargs):
        raise BrokerError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(canvas._chord, "apply_async", unreachable)
    assert batch_job_start_task.run(job.pk) == 0
    job.refresh_from_db()
    assert (job.status, job.error_type) == (BatchStatus.FAILED, "unavailable")
    assert "Connection refused" in job.error
    assert job.error_type in batch.RESUMABLE_PROBLEMS


def test_an_integer_column_beyond_float_precision_is_scored_as_the_predict_api_does(
    iris_prod, django_capture_on_commit_callbacks
):
    """JSON's 9007199254740993 reaches the model as the nearest float; a Parquet int64 column
    holding it must too, not crash the chunk (Arrow's checked cast refuses to round it)."""
    frame = _frame(10).round().astype("int64")
    frame.loc[4, "sepal_length"] = 2**53 + 1
    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(frame), enqueue=False
    )
    job = _run(job, django_capture_on_commit_callbacks)
    assert job.status == BatchStatus.SUCCEEDED, job.error
    out = _read(job.output_name, "parquet")
    assert out["row"].tolist() == list(range(10))
    estimator = batch.model_cache.get(batch.version_info(job.version), model_name="iris").estimator
    expected = estimator.predict(frame.to_numpy(dtype="float64"))
    assert out["prediction"].tolist() == expected.tolist()


def test_a_job_of_too_many_chunks_is_refused_at_creation_or_while_planning(iris_prod, settings):
    settings.BATCH_MAX_CHUNKS = 3
    with pytest.raises(ValidationFailed) as refused:
        batch.batch_job_create(
            model=iris_prod, actor="tests", upload=_parquet(_frame(100)), chunk_rows=10
        )
    assert refused.value.fields == {"chunk_rows": ["at least 34"]}
    assert not BatchJob.objects.exists()
    # A CSV's rows are only known when it is staged: the job fails then, saying what to ask.
    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_csv(_frame(100)), chunk_rows=10, enqueue=False
    )
    assert _planning_fails(job) == (BatchStatus.FAILED, "too_many_chunks")
    assert "larger chunk_rows" in job.error


def test_a_second_start_sends_only_the_chunks_no_worker_holds(iris_prod):
    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(150)), chunk_rows=50, enqueue=False
    )
    assert batch.batch_job_start(job_id=job.pk) == [0, 1, 2]
    BatchChunk.objects.filter(job=job, index=1).update(status="running", attempts=1)
    assert batch.batch_chunk_run(job_id=job.pk, index=0) == "done"
    assert batch.batch_job_start(job_id=job.pk) == [2]


@pytest.mark.parametrize("damage", ["missing", "torn"])
def test_a_part_lost_before_it_reached_the_disk_is_scored_again_on_resume(iris_prod, damage):
    """Parquet outputs' parts are written without waiting for the disk: the merge checks each
    and a lost one makes its chunk pending again."""
    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(150)), chunk_rows=50, enqueue=False
    )
    for index in batch.batch_job_start(job_id=job.pk):
        batch.batch_chunk_run(job_id=job.pk, index=index)
    part = batch._part_name(job, 1, "output")
    if damage == "missing":
        batch.get_artifact_storage().delete(part)
    else:
        store_write(part, store_read(part)[:-64])
    job = batch.batch_job_finish(job_id=job.pk)
    assert (job.status, job.error_type) == (BatchStatus.FAILED, "part_lost")
    assert "chunk 1" in job.error
    assert (job.rows_done, job.chunks_done) == (100, 2)
    lost = BatchChunk.objects.get(job=job, index=1)
    # Pending again, and not known to be checked until whoever scores it again says so.
    assert (lost.status, lost.verified) == ("pending", False)
    batch.batch_job_resume(job=job, actor="tests")
    job = _run(job)
    assert job.status == BatchStatus.SUCCEEDED
    assert _read(job.output_name, "parquet")["row"].tolist() == list(range(150))


def test_a_chunk_on_a_warm_worker_reads_no_version_row_and_few_queries(iris_prod):
    """A chunk's bookkeeping is a few statements: the claim (which returns the chunk's rows),
    and the count's lock, chunk and job. The heartbeats are stamped by the first claim of a
    process and then every JOB_HEARTBEAT_SECONDS / 2, not by every chunk; the job's and the
    version's rows are read once per job and process, and the version's schema and metadata
    (JSON) only when the model is loaded. Through the ORM and with a read-back, these were a
    fifth of a 50,000-row chunk's time on a 2-core machine."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(150)), chunk_rows=50, enqueue=False
    )
    batch.batch_job_start(job_id=job.pk)
    with CaptureQueriesContext(connection) as first:
        assert batch.batch_chunk_run(job_id=job.pk, index=0) == "done"  # loads the model
    assert [q for q in first.captured_queries if "heartbeat_at" in q["sql"]]
    with CaptureQueriesContext(connection) as warm:
        assert batch.batch_chunk_run(job_id=job.pk, index=1) == "done"
    # The test's own transaction turns each commit into a savepoint: not counted.
    statements = [q["sql"] for q in warm.captured_queries if "SAVEPOINT" not in q["sql"]]
    settings_local = 2 if connection.vendor == "postgresql" else 0  # SET LOCAL per commit
    assert len(statements) == 4 + settings_local, statements
    assert not [sql for sql in statements if "input_schema" in sql]
    assert BatchChunk.objects.get(job=job, index=1).attempts == 1


def test_a_version_deleted_while_its_job_runs_fails_the_job_at_the_next_chunk(iris_prod):
    """A worker that already scored a chunk holds the job and the model in its caches; the
    claim still asks the database whether the version is there."""
    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(150)), chunk_rows=50, enqueue=False
    )
    batch.batch_job_start(job_id=job.pk)
    assert batch.batch_chunk_run(job_id=job.pk, index=0) == "done"
    version = job.version
    services.model_version_transition(version=version, stage=Stage.ARCHIVED, actor="tests")
    services.model_version_delete(version=version, actor="tests")
    assert batch.batch_chunk_run(job_id=job.pk, index=1) == "failed"
    job.refresh_from_db()
    assert (job.status, job.error_type, job.version_id) == ("failed", "version_gone", None)
    assert job.error == "The scoring version was deleted."
    assert batch.batch_chunk_run(job_id=job.pk, index=2) == "skipped"


def test_a_chunk_whose_job_was_resumed_after_its_claim_missed_it_is_skipped(iris_prod, monkeypatch):
    """The claim found the job not running (cancelled or failed) and a resume committed
    before the claim looked at why: the chunk is left to the resume's own chord, and the job
    is not failed for attempts it never made. The interleaving is injected on purpose: the
    claim statement answers "no row" once."""
    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(100)), chunk_rows=50, enqueue=False
    )
    batch.batch_job_start(job_id=job.pk)
    real_sql = batch._sql

    def claim_missed(name, params):
        return None if name == "claim" else real_sql(name, params)

    monkeypatch.setattr(batch, "_sql", claim_missed)
    assert batch.batch_chunk_run(job_id=job.pk, index=0) == "skipped"
    monkeypatch.setattr(batch, "_sql", real_sql)
    job.refresh_from_db()
    assert job.status == BatchStatus.RUNNING
    assert BatchChunk.objects.get(job=job, index=0).status == "pending"
    assert batch.batch_chunk_run(job_id=job.pk, index=0) == "done"


def test_a_worker_stamps_the_heartbeats_again_after_half_the_heartbeat_interval(
    iris_prod, settings
):
    """Claims between two stamps leave the heartbeats alone; the first claim past
    JOB_HEARTBEAT_SECONDS / 2 stamps this job's and every job's with chunks queued."""
    settings.JOB_HEARTBEAT_SECONDS = 10
    long_ago = timezone.now() - timedelta(hours=1)
    running = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(150)), chunk_rows=50, enqueue=False
    )
    queued = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_parquet(_frame(50)), chunk_rows=50, enqueue=False
    )
    for job in (running, queued):
        batch.batch_job_start(job_id=job.pk)
    batch.batch_chunk_run(job_id=running.pk, index=0)  # stamps: the process's first claim
    BatchJob.objects.filter(pk__in=[running.pk, queued.pk]).update(heartbeat_at=long_ago)
    batch._heartbeats_stamped_at = time.monotonic() - 3  # stamped 3 s ago
    batch.batch_chunk_run(job_id=running.pk, index=1)
    assert BatchJob.objects.get(pk=queued.pk).heartbeat_at == long_ago
    # The chunk's own job is stamped whenever its heartbeat is half an interval old: its
    # chunk may have been redelivered from a dead worker, with no other chunk queued.
    assert BatchJob.objects.get(pk=running.pk).heartbeat_at > long_ago
    batch._heartbeats_stamped_at = time.monotonic() - 5  # half the interval ago
    batch.batch_chunk_run(job_id=running.pk, index=2)
    assert BatchJob.objects.get(pk=queued.pk).heartbeat_at > long_ago


def _typed_parquet(columns: dict) -> io.BytesIO:
    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    sink.seek(0)
    sink.name = "typed.parquet"
    return sink


def test_feature_columns_of_any_number_text_or_boolean_type_are_scored(
    iris_prod, django_capture_on_commit_callbacks
):
    """Dictionary-encoded text (pandas' categoricals), large strings, string views, decimals
    (128 and 256 bits), half floats and narrow integers are read as the numbers they hold, a
    text that is no number making an invalid row, as in a predict request."""
    from decimal import Decimal

    frame = _frame(12)
    values = [f"{v:.1f}" for v in frame["sepal_length"]]
    values[3] = "five"
    widths = [f"{v:.1f}" for v in frame["sepal_width"]]
    lengths = [Decimal(f"{v:.1f}") for v in frame["petal_length"]]
    columns = {
        "sepal_length": pa.array(values).dictionary_encode(),
        "sepal_width": pa.array(widths, pa.large_string()),
        "petal_length": pa.array(lengths, pa.decimal128(4, 1)),
        "petal_width": pa.array((frame["petal_width"] * 10).round(), pa.int16()),
    }
    variants = [
        columns,
        {
            **columns,
            "sepal_width": pa.array(widths, pa.string_view()),
            "petal_length": pa.array(lengths, pa.decimal256(4, 1)),
            "petal_width": pa.array((frame["petal_width"] * 10).round(), pa.float16()),
        },
    ]
    expected = frame.round(1).astype("float64")
    expected["petal_width"] = (frame["petal_width"] * 10).round()
    for variant in variants:
        job = batch.batch_job_create(
            model=iris_prod, actor="tests", upload=_typed_parquet(variant), enqueue=False
        )
        job = _run(job, django_capture_on_commit_callbacks)
        assert job.status == BatchStatus.SUCCEEDED, job.error
        assert (job.rows_done, job.rows_failed) == (12, 1)
        out = _read(job.output_name, "parquet")
        assert out["row"].tolist() == [r for r in range(12) if r != 3]
        errors = _read(job.errors_name, "csv")
        assert errors["row"].tolist() == [3] and errors["field"].tolist() == ["sepal_length"]
        estimator = batch.model_cache.get(
            batch.version_info(job.version), model_name="iris"
        ).estimator
        scored = estimator.predict(expected.drop(index=3).to_numpy())
        assert out["prediction"].tolist() == scored.tolist()


def test_an_all_null_column_makes_invalid_rows_not_a_refusal(
    iris_prod, django_capture_on_commit_callbacks
):
    upload = _typed_parquet(
        {
            "sepal_length": pa.nulls(3),
            "sepal_width": [3.5] * 3,
            "petal_length": [1.4] * 3,
            "petal_width": [0.2] * 3,
        }
    )
    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=upload, max_error_share=1, enqueue=False
    )
    job = _run(job, django_capture_on_commit_callbacks)
    assert (job.status, job.rows_failed) == (BatchStatus.SUCCEEDED, 3), job.error
    assert set(_read(job.errors_name, "csv")["field"]) == {"sepal_length"}


@pytest.mark.parametrize(
    ("column", "shown"),
    [
        (pa.array([datetime(2026, 1, 1)] * 3, pa.timestamp("ns")), "timestamp[ns]"),
        (pa.array([datetime(2026, 1, 1).date()] * 3, pa.date32()), "date32[day]"),
        (pa.array([[1.0, 2.0]] * 3), "list<element: double>"),
        (pa.array([b"\x01"] * 3, pa.binary()), "binary"),
        (pa.array([{"a": 1.0}] * 3), "struct<a: double>"),
        (
            pa.array([{f"field_{i}": 1.0 for i in range(50)}] * 3),
            "struct<field_0: double, field_1: double, field_2: double, field_3: double, fi...",
        ),
    ],
)
def test_a_feature_column_its_feature_cannot_take_is_refused_at_creation_naming_it(
    iris_prod, column, shown
):
    upload = _typed_parquet(
        {
            "sepal_length": column,
            "sepal_width": [3.5] * 3,
            "petal_length": [1.4] * 3,
            "petal_width": [0.2] * 3,
        }
    )
    with pytest.raises(ValidationFailed) as refused:
        batch.batch_job_create(model=iris_prod, actor="tests", upload=upload, enqueue=False)
    assert refused.value.fields == {"file": [f"unusable column types: sepal_length ({shown})"]}
    assert not BatchJob.objects.exists()


def test_a_feature_column_named_twice_is_refused_at_creation(iris_prod):
    table = pa.Table.from_arrays(
        [pa.array([value] * 3) for value in (5.1, 5.2, 3.5, 1.4, 0.2)],
        names=["sepal_length", "sepal_length", "sepal_width", "petal_length", "petal_width"],
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    sink.seek(0)
    sink.name = "twice.parquet"
    with pytest.raises(ValidationFailed) as refused:
        batch.batch_job_create(model=iris_prod, actor="tests", upload=sink, enqueue=False)
    assert refused.value.fields == {"file": ["repeated columns: sepal_length"]}


def test_text_features_take_any_flat_column_and_numbers_no_dates():
    """The rule per feature type, as _column_values reads a column: text features cast any
    value but a nested one to text; number and boolean features parse text, so take text,
    numbers and booleans, not dates, times or bytes."""
    cases = {
        pa.timestamp("ms"): {"string": True, "float": False, "boolean": False},
        pa.binary(): {"string": True, "integer": False},
        pa.list_(pa.float64()): {"string": False, "float": False},
        pa.map_(pa.string(), pa.float64()): {"string": False},
        pa.dictionary(pa.int8(), pa.date32()): {"string": True, "float": False},
        pa.dictionary(pa.int8(), pa.int64()): {"integer": True, "boolean": True},
        pa.float16(): {"float": True, "string": True},
        pa.null(): {"float": True, "boolean": True},
    }
    for arrow_type, kinds in cases.items():
        for kind, usable in kinds.items():
            assert batch._usable_type(arrow_type, kind) is usable, (arrow_type, kind)


def test_a_dataset_input_gets_the_same_column_checks(iris_prod):
    from quality import training

    sink = io.BytesIO()
    pq.write_table(
        pa.table(
            {
                "sepal_length": pa.array([datetime(2026, 1, 1)] * 3, pa.timestamp("ns")),
                "sepal_width": [3.5] * 3,
                "petal_length": [1.4] * 3,
                "petal_width": [0.2] * 3,
                "species": [0, 1, 2],
            }
        ),
        sink,
    )
    sink.seek(0)
    dataset = training.dataset_create(
        name="dates",
        actor="tests",
        target_column="species",
        feature_columns=list(factories.IRIS_FEATURES),
        file=sink,
        file_format="parquet",
    )
    with pytest.raises(ValidationFailed) as refused:
        batch.batch_job_create(model=iris_prod, actor="tests", dataset=dataset.pk, enqueue=False)
    assert refused.value.fields == {
        "dataset": ["unusable column types: sepal_length (timestamp[ns])"]
    }


def test_a_sqlite_too_old_for_returning_fails_the_system_check(monkeypatch):
    """The chunks' bookkeeping needs SQLite 3.35; Django 5.2 starts on 3.31 without it. The
    library's version and the configured engines are replaced on purpose."""
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    from predictions import checks

    monkeypatch.setattr(checks, "_engines", lambda: {"django.db.backends.sqlite3"})
    assert checks.sqlite_returning_check() == []  # this machine's Python
    monkeypatch.setattr(checks.sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(checks.sqlite3, "sqlite_version", "3.31.1")
    [error] = checks.sqlite_returning_check()
    assert error.id == "predictions.E001" and "3.31.1" in error.msg
    with pytest.raises(SystemCheckError, match=r"predictions\.E001"):
        call_command("check")
    monkeypatch.setattr(checks, "_engines", lambda: {"django.db.backends.postgresql"})
    assert checks.sqlite_returning_check() == []


def test_a_csv_line_with_more_or_fewer_fields_is_an_invalid_row_and_later_rows_keep_their_numbers(
    iris_prod, django_capture_on_commit_callbacks
):
    """pyarrow cannot say which line was ragged, so such a file is staged record by record:
    the ragged lines go to the errors file under their own row numbers, a quoted value holding
    a newline is still one row, blank lines are skipped as pyarrow skips them, and the error
    share counts them like any invalid row."""
    header = ",".join(NAMES)
    lines = [f"{5 + i % 3}.1,3.5,1.4,0.2" for i in range(120)]
    lines[4] = "5.1,3.5,1.4,0.2,9.9"  # one field too many
    lines[70] = "5.1,3.5"  # two too few
    lines[71] = '"5.1\nx",3.5,1.4,0.2'  # a quoted newline: one row, whose value is no number
    lines[100] = "5.1,3.5,1.4,0.2,,,"
    data = io.BytesIO(("\n".join([header, *lines[:50], "", *lines[50:]]) + "\n").encode())
    data.name = "rows.csv"
    job = batch.batch_job_create(
        model=iris_prod,
        actor="tests",
        upload=data,
        chunk_rows=64,
        output_format="csv",
        enqueue=False,
    )
    job = _run(job, django_capture_on_commit_callbacks)
    assert job.status == BatchStatus.SUCCEEDED, job.error
    assert (job.rows_total, job.rows_done, job.rows_failed) == (120, 120, 4)
    out = _read(job.output_name, "csv")
    assert out["row"].tolist() == [i for i in range(120) if i not in (4, 70, 71, 100)]
    errors = _read(job.errors_name, "csv").to_dict("records")
    assert errors == [
        {"row": 4, "field": "features", "reason": "the line has 5 fields where the header has 4"},
        {"row": 70, "field": "features", "reason": "the line has 2 fields where the header has 4"},
        {"row": 71, "field": "sepal_length", "reason": "must be a number"},
        {"row": 100, "field": "features", "reason": "the line has 7 fields where the header has 4"},
    ]

    # Past the error share, the job fails saying so, as for any invalid rows.
    data.seek(0)
    job = batch.batch_job_create(
        model=iris_prod,
        actor="tests",
        upload=data,
        chunk_rows=64,
        max_error_share=0.01,
        enqueue=False,
    )
    job = _run(job, django_capture_on_commit_callbacks)
    assert job.status == BatchStatus.FAILED
    assert job.error_type == "too_many_invalid_rows", job.error_type


def test_a_ragged_csv_is_still_checked_against_its_sha256_and_bad_text_is_unreadable(iris_prod):
    data = f"{','.join(NAMES)}\n1,2,3,4,5\n1,2,3,4\n".encode()
    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=io.BytesIO(data), enqueue=False
    )
    store_write(job.input_name, data + b"1,2,3,4\n")
    assert _planning_fails(job) == (BatchStatus.FAILED, "input_integrity")

    # Text that is not UTF-8, read record by record, is as unreadable as pyarrow finds it.
    upload = io.BytesIO(f"{','.join(NAMES)}\n1,2,3,4,5\n\xff\xfe,2,3,4\n".encode("latin-1"))
    upload.name = "rows.csv"
    job = batch.batch_job_create(model=iris_prod, actor="tests", upload=upload, enqueue=False)
    assert _planning_fails(job) == (BatchStatus.FAILED, "input_unreadable")
    assert "utf-8" in job.error


def test_a_ragged_csv_read_record_by_record_reads_as_pyarrow_reads_a_clean_one(
    iris_prod, django_capture_on_commit_callbacks, settings
):
    """A byte-order mark (Excel's UTF-8 CSV) and blank lines before the header are dropped as
    pyarrow drops them, so the first feature is not lost; a line past pyarrow's block size
    makes the file unreadable instead of filling the worker's memory."""
    header = ",".join(NAMES)
    rows = [f"{5 + i % 3}.1,3.5,1.4,0.2" for i in range(20)]
    rows[2] = "5.1,3.5,1.4,0.2,7"
    data = io.BytesIO(("\ufeff\n\n" + "\n".join([header, *rows]) + "\n").encode())
    data.name = "rows.csv"
    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=data, output_format="csv", enqueue=False
    )
    job = _run(job, django_capture_on_commit_callbacks)
    assert job.status == BatchStatus.SUCCEEDED, job.error
    assert (job.rows_total, job.rows_failed) == (20, 1)
    assert _read(job.errors_name, "csv")["row"].tolist() == [2]

    # Past the first block, which the request itself reads for the header.
    long_line = "," * (2 << 20)
    data = io.BytesIO(("\n".join([header, rows[2], *rows * 4000, long_line]) + "\n").encode())
    data.name = "rows.csv"
    job = batch.batch_job_create(model=iris_prod, actor="tests", upload=data, enqueue=False)
    assert _planning_fails(job) == (BatchStatus.FAILED, "input_unreadable")
    assert "longer than" in job.error


def test_a_parquet_input_whose_row_groups_or_footer_would_take_the_memory_is_refused(
    iris_prod, settings
):
    """A chunk decodes whole row groups and parses the footer: 50 million rows of a constant
    are a few hundred KB on disk and gigabytes decoded; a million one-row groups make a footer
    of hundreds of MB. Refused at creation naming the file, and at planning for a job made
    before the limits."""
    table = pa.table({name: pa.array(np.full(2_000_000, 1.5)) for name in NAMES})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=2_000_000, compression="zstd")
    assert len(sink.getvalue()) < 200_000
    settings.BATCH_MAX_ROW_GROUP_BYTES = 32 * 1024 * 1024  # 2M rows x 4 features x 8 = 64 MB
    sink.seek(0)
    sink.name = "bomb.parquet"
    with pytest.raises(ValidationFailed) as refused:
        batch.batch_job_create(model=iris_prod, actor="tests", upload=sink, enqueue=False)
    assert "Row group 0 holds 2000000 rows" in refused.value.fields["file"][0]
    assert "at most 1048576 rows" in refused.value.message

    settings.BATCH_MAX_ROW_GROUP_BYTES = 256 * 1024 * 1024
    sink.seek(0)
    job = batch.batch_job_create(model=iris_prod, actor="tests", upload=sink, enqueue=False)
    settings.BATCH_MAX_ROW_GROUP_BYTES = 32 * 1024 * 1024
    assert _planning_fails(job) == (BatchStatus.FAILED, "input_too_large")

    settings.BATCH_MAX_FOOTER_BYTES = 4096
    many = _parquet(_frame(300), row_group_size=5)
    with pytest.raises(ValidationFailed, match=r"The Parquet footer is \d+ bytes"):
        batch.batch_job_create(model=iris_prod, actor="tests", upload=many, enqueue=False)


def test_a_csv_staged_in_row_groups_of_chunk_rows_is_not_held_to_the_row_group_limit(
    iris_prod, django_capture_on_commit_callbacks, settings
):
    """The limit is for Parquet files someone else wrote; the product stages a CSV in row
    groups of chunk_rows, which BATCH_CHUNK_ROWS_MAX bounds."""
    settings.BATCH_MAX_ROW_GROUP_BYTES = 1024  # 64 rows x 4 features x 8 = 2 KB
    job = batch.batch_job_create(
        model=iris_prod, actor="tests", upload=_csv(_frame(200)), chunk_rows=64, enqueue=False
    )
    job = _run(job, django_capture_on_commit_callbacks)
    assert job.status == BatchStatus.SUCCEEDED, job.error
