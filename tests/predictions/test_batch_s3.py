"""Batch jobs over inputs on S3 (moto's server on loopback, through django-storages, boto3 and
pyarrow unmocked, behind a relay that counts the bytes the server sends): a chunk fetches its
own row groups by byte ranges, not the whole input, and the job's output is the one the same
job gives on a local folder."""

from __future__ import annotations

import io
import uuid

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlregistry import services
from mlregistry.models import Stage
from predictions import batch
from predictions.models import BatchStatus
from quality import training
from tests import factories

pytestmark = pytest.mark.django_db

NAMES = factories.IRIS_FEATURES
ROWS = 60_000
CHUNK_ROWS = 6_000


def _frame() -> pd.DataFrame:
    """Iris rows with noise: distinct values, so a row group is ~1/10 of the file's bytes."""
    x, _ = factories.iris_frame()
    frame = pd.concat([x] * (ROWS // len(x) + 1), ignore_index=True).head(ROWS)
    noise = np.random.default_rng(3).normal(scale=0.01, size=frame.shape)
    return frame + noise


def _parquet(frame: pd.DataFrame) -> io.BytesIO:
    sink = io.BytesIO()
    pq.write_table(
        pa.Table.from_pandas(frame, preserve_index=False), sink, row_group_size=CHUNK_ROWS
    )
    sink.seek(0)
    sink.name = "rows.parquet"
    return sink


def _production_model(name: str):
    model = factories.registered_model_create(name)
    version = factories.version_create(model)
    services.model_version_transition(version=version, stage=Stage.PRODUCTION, actor="tests")
    return model, version


def _output(job) -> pd.DataFrame:
    with batch.get_artifact_storage().open(job.output_name, "rb") as handle:
        return pq.read_table(io.BytesIO(handle.read())).to_pandas()


def _scored(job, django_capture_on_commit_callbacks, relay=None) -> list[int]:
    """Runs the job's tasks in this process; the bytes served to each chunk, with a relay."""
    served = []
    pending = batch.batch_job_start(job_id=job.pk)
    for index in pending:
        before = relay.served if relay else 0
        with django_capture_on_commit_callbacks(execute=False):
            batch.batch_chunk_run(job_id=job.pk, index=index)
        served.append((relay.served if relay else 0) - before)
    batch.batch_job_finish(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == BatchStatus.SUCCEEDED, job.error
    return served


def test_each_chunk_reads_its_row_groups_by_byte_ranges_with_the_local_result(
    settings, s3_server, s3_relay, django_capture_on_commit_callbacks
):
    frame = _frame()
    data = _parquet(frame).getvalue()
    model, _ = _production_model("iris")
    local_job = batch.batch_job_create(
        model=model, actor="tests", upload=_parquet(frame), chunk_rows=CHUNK_ROWS, enqueue=False
    )
    _scored(local_job, django_capture_on_commit_callbacks)
    expected = _output(local_job)

    entry = s3_server.storage_entry("mlr-tests", f"{uuid.uuid4().hex[:12]}/artifacts")
    entry["OPTIONS"]["endpoint_url"] = s3_relay.endpoint
    settings.STORAGES = {**settings.STORAGES, "artifacts": entry}
    model, version = _production_model("iris-on-s3")
    job = batch.batch_job_create(
        model=model, actor="tests", upload=_parquet(frame), chunk_rows=CHUNK_ROWS, enqueue=False
    )
    # The model is loaded before: what a chunk is served is then its input and its writes.
    batch.model_cache.get(batch.version_info(version), model_name=model.name)
    served = _scored(job, django_capture_on_commit_callbacks, s3_relay)

    assert len(served) == ROWS // CHUNK_ROWS == 10
    # A tenth of the rows, the footer, and the small answers to the part writes: never the
    # whole input, as when the storage's file object downloaded it for every chunk.
    assert max(served) < len(data) / 4, (served, len(data))
    pd.testing.assert_frame_equal(_output(job), expected)


def test_a_parquet_dataset_on_s3_is_checked_from_its_footer(s3_relayed, s3_relay):
    frame = _frame().assign(species=0)
    dataset = training.dataset_create(
        name="noisy-iris",
        actor="tests",
        target_column="species",
        feature_columns=NAMES,
        file=_parquet(frame),
        file_format="parquet",
    )
    size = s3_relayed.size(dataset.file.name)
    model, _ = _production_model("iris")

    before = s3_relay.served
    job = batch.batch_job_create(model=model, actor="tests", dataset=dataset.pk, enqueue=False)

    assert job.input_format == "parquet"
    assert s3_relay.served - before < size / 4, (s3_relay.served - before, size)


def test_a_csv_job_on_s3_is_staged_and_scored_as_locally(
    s3_relayed, django_capture_on_commit_callbacks
):
    frame = _frame().head(2_000)
    upload = io.BytesIO(frame.to_csv(index=False).encode())
    upload.name = "rows.csv"
    model, _ = _production_model("iris")
    job = batch.batch_job_create(
        model=model, actor="tests", upload=upload, chunk_rows=500, enqueue=False
    )
    _scored(job, django_capture_on_commit_callbacks)

    out = _output(job)
    assert job.chunks_total == 4
    assert out["row"].tolist() == list(range(2_000))
    estimator = batch.model_cache.get(batch.version_info(job.version), model_name="iris").estimator
    assert out["prediction"].tolist() == estimator.predict(frame.to_numpy()).tolist()
