"""Batch scoring jobs in process: planning, chunks, validation, errors, finish, cancel, prune.

The tasks run eagerly here (each chunk a task call in this process); tests/predictions/
test_batch_worker.py runs them in real worker processes."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from config.celery import app as celery_app
from mlregistry import services
from mlregistry.models import AuditEvent, Stage
from predictions import batch
from predictions.models import BatchJob, BatchStatus
from tests import factories

NAMES = factories.IRIS_FEATURES


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


def _run(job: BatchJob, django_capture_on_commit_callbacks) -> BatchJob:
    """Runs every task of the job in this process, in the order workers would."""
    for index in batch.batch_job_start(job_id=job.pk):
        with django_capture_on_commit_callbacks(execute=False):
            batch.batch_chunk_run(job_id=job.pk, index=index)
    batch.batch_job_finish(job_id=job.pk)
    job.refresh_from_db()
    return job


def _read(name: str, file_format: str) -> pd.DataFrame:
    storage = batch.get_artifact_storage()
    with storage.open(name, "rb") as handle:
        data = handle.read()
    if file_format == "parquet":
        return pq.read_table(io.BytesIO(data)).to_pandas()
    return pd.read_csv(io.BytesIO(data))


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
    estimator = batch.model_cache.get(
        batch.version_routing_info(job.version), model_name="iris"
    ).estimator
    assert out["prediction"].tolist() == estimator.predict(frame.to_numpy()).tolist()
    np.testing.assert_allclose(
        out[["probability_0", "probability_1", "probability_2"]].to_numpy(),
        estimator.predict_proba(frame.to_numpy()),
    )
    assert (out["version"] == 1).all()
    assert _read(job.errors_name, "csv").empty
    assert AuditEvent.objects.filter(object_type="predictions.batchjob", verb="finish").exists()
