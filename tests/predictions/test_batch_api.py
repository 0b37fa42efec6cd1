"""The batch-jobs API: 202 with a job, progress and links, streamed files, cancel, and bad
input answered as JSON naming the field. Tasks run eagerly in this process."""

from __future__ import annotations

import io
import urllib.request

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rest_framework.test import APIClient

from config.celery import app as celery_app
from mlregistry import services
from mlregistry.models import AuditEvent, Stage
from predictions.models import BatchJob, BatchStatus
from tests import factories
from tests.storage import is_local

URL = "/api/v1/models/iris/batch-jobs"

pytestmark = pytest.mark.storage


@pytest.fixture
def batcher(db) -> APIClient:
    user = factories.staff_create(
        "batcher", extra_perms=["add_batchjob", "cancel_batchjob", "view_batchjob"]
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.token_create(user)}")
    return client


@pytest.fixture
def iris(db):
    model = factories.registered_model_create("iris")
    version = factories.version_create(model)
    services.model_version_transition(version=version, stage=Stage.PRODUCTION, actor="tests")
    factories.version_create(model, c=0.5)
    return model


@pytest.fixture
def eager():
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = False


def _parquet(rows: int = 150) -> io.BytesIO:
    x, _ = factories.iris_frame()
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(x.head(rows), preserve_index=False), sink)
    sink.seek(0)
    sink.name = "rows.parquet"
    return sink


def _fetch(api: APIClient, link: str) -> tuple[bytes, str]:
    """The bytes behind a link a job hands out, and their Content-Disposition: the API's own
    download route (a local folder), or a presigned URL to the bucket (S3), fetched over HTTP
    without the API's credentials."""
    if is_local():
        response = api.get(link)
        assert response.status_code == 200
        return b"".join(response.streaming_content), response["Content-Disposition"]
    with urllib.request.urlopen(link, timeout=10) as response:
        return response.read(), response.headers["Content-Disposition"]


def _field(response, name: str) -> list[str]:
    body = response.json()
    assert "error" in body, body
    return body["error"]["fields"][name]


def test_post_scores_a_file_and_get_shows_progress_and_streams_the_output(
    batcher, iris, eager, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = batcher.post(
            URL,
            {"file": _parquet(), "version": 2, "output_format": "csv", "chunk_rows": 40},
            format="multipart",
        )
    assert response.status_code == 202, response.json()
    job_id = response.json()["id"]
    assert response.json()["status"] == "queued"

    body = batcher.get(f"{URL}/{job_id}").json()
    assert body["status"] == "succeeded", body
    assert (body["rows_total"], body["rows_done"], body["rows_failed"]) == (150, 150, 0)
    assert (body["chunks_total"], body["chunks_done"], body["version"]) == (4, 4, 2)
    assert body["rows_per_second"] > 0
    if is_local():
        assert body["links"]["output"].endswith(f"{URL}/{job_id}/output")
    else:
        assert "X-Amz-Signature=" in body["links"]["output"]  # straight from the bucket

    data, disposition = _fetch(batcher, body["links"]["output"])
    assert disposition == f'attachment; filename="iris-batch-{job_id}-output.csv"'
    out = pd.read_csv(io.BytesIO(data))
    assert len(out) == 150 and (out["version"] == 2).all()
    assert _fetch(batcher, body["links"]["errors"])[0] == b"row,field,reason\n"

    listed = batcher.get(URL).json()
    assert [job["id"] for job in listed["results"]] == [job_id]
    assert AuditEvent.objects.filter(object_type="predictions.batchjob", verb="create").count() == 1


def test_production_is_the_default_and_a_dataset_can_be_the_input(
    batcher, iris, django_capture_on_commit_callbacks
):
    dataset = factories.iris_dataset_create("iris-data")
    response = batcher.post(URL, {"dataset": dataset.pk}, format="multipart")
    assert response.status_code == 202, response.json()
    assert response.json()["version"] == 1
    assert response.json()["output_format"] == "parquet"
    assert response.json()["chunk_rows"] == 50_000


@pytest.mark.parametrize(
    ("data", "field", "status"),
    [
        ({"version": 9}, "version", 400),
        ({"chunk_rows": 10_000_000}, "chunk_rows", 400),
        ({"chunk_rows": 0}, "chunk_rows", 400),
        ({"output_format": "xlsx"}, "output_format", 400),
        ({"max_error_share": 2}, "max_error_share", 400),
        ({"alias": "champion"}, "alias", 400),
        ({"version": 1, "alias": "latest"}, "alias", 400),
        ({"dataset": 12345}, "dataset", 400),
    ],
)
def test_bad_settings_are_a_400_naming_the_field_and_create_nothing(
    batcher, iris, data, field, status
):
    response = batcher.post(URL, {"file": _parquet(), **data}, format="multipart")
    assert response.status_code == status, response.json()
    assert _field(response, field)
    assert not BatchJob.objects.exists()


def test_a_file_that_is_not_parquet_or_lacks_features_is_a_400_naming_file(batcher, iris):
    fake = io.BytesIO(b"not parquet at all")
    fake.name = "rows.parquet"
    response = batcher.post(URL, {"file": fake}, format="multipart")
    assert response.status_code == 400
    assert _field(response, "file")

    csv = io.BytesIO(b"sepal_length,sepal_width\n1,2\n")
    csv.name = "rows.csv"
    response = batcher.post(URL, {"file": csv}, format="multipart")
    assert response.status_code == 400
    assert "petal_length" in _field(response, "file")[0]

    response = batcher.post(URL, {}, format="multipart")
    assert response.status_code == 400
    assert _field(response, "file") and _field(response, "dataset")
    assert not BatchJob.objects.exists()


def test_latest_alias_resolves_to_the_highest_version(batcher, iris):
    response = batcher.post(URL, {"file": _parquet(), "alias": "latest"}, format="multipart")
    assert response.status_code == 202
    assert (response.json()["version"], response.json()["alias"]) == (2, "latest")


def test_an_alias_resolves_to_the_version_it_points_to_when_the_job_is_made(batcher, iris):
    services.model_alias_set(model=iris, alias="champion", version=1, actor="tests")
    response = batcher.post(URL, {"file": _parquet(), "alias": "champion"}, format="multipart")
    assert response.status_code == 202
    assert (response.json()["version"], response.json()["alias"]) == (1, "champion")
    missing = batcher.post(URL, {"file": _parquet(), "alias": "shadow"}, format="multipart")
    assert missing.status_code == 400 and "shadow" in _field(missing, "alias")[0]


def test_cancel_answers_the_job_then_409(batcher, iris):
    job_id = batcher.post(URL, {"file": _parquet()}, format="multipart").json()["id"]
    response = batcher.post(f"{URL}/{job_id}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == BatchStatus.CANCELLED
    again = batcher.post(f"{URL}/{job_id}/cancel")
    assert again.status_code == 409
    assert again.json()["error"]["fields"]["status"]
    assert batcher.post(f"{URL}/{job_id}/resume").status_code == 409


def test_files_of_an_unfinished_job_and_unknown_jobs_are_404(batcher, iris):
    job_id = batcher.post(URL, {"file": _parquet()}, format="multipart").json()["id"]
    assert batcher.get(f"{URL}/{job_id}/output").status_code == 404
    assert batcher.get(f"{URL}/{job_id + 100}").status_code == 404
    assert batcher.post(f"{URL}/{job_id + 100}/cancel").status_code == 404


def test_clients_read_jobs_but_only_permitted_staff_write_them(batcher, iris, client_api):
    job_id = batcher.post(URL, {"file": _parquet()}, format="multipart").json()["id"]
    assert client_api.get(f"{URL}/{job_id}").status_code == 200
    assert client_api.post(URL, {"file": _parquet()}, format="multipart").status_code == 403
    assert client_api.post(f"{URL}/{job_id}/cancel").status_code == 403
    assert APIClient().get(URL).status_code == 401


def test_admin_lists_jobs_with_a_progress_bar_and_cancels_through_the_service(
    iris, client, django_capture_on_commit_callbacks
):
    from predictions import batch

    staff = factories.staff_create(
        "operator", extra_perms=["view_batchjob", "change_batchjob", "cancel_batchjob"]
    )
    client.force_login(staff)
    running = batch.batch_job_create(model=iris, actor="tests", upload=_parquet(), enqueue=False)
    batch.batch_job_start(job_id=running.pk)
    batch.batch_chunk_run(job_id=running.pk, index=0)
    batch.batch_job_finish(job_id=running.pk)
    page = client.get("/admin/predictions/batchjob/")
    assert page.status_code == 200
    assert b'<progress value="150" max="150"' in page.content

    queued = batch.batch_job_create(model=iris, actor="tests", upload=_parquet(), enqueue=False)
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(
            "/admin/predictions/batchjob/",
            {"action": "cancel_jobs", "_selected_action": [queued.pk, running.pk]},
            follow=True,
        )
    assert response.status_code == 200
    assert BatchJob.objects.get(pk=queued.pk).status == BatchStatus.CANCELLED
    # The finished job is refused by the service and said so, not silently skipped.
    assert b"already succeeded" in response.content
    assert AuditEvent.objects.filter(verb="cancel", actor_name="operator").count() == 1
    detail = client.get(f"/admin/predictions/batchjob/{running.pk}/change/")
    assert detail.status_code == 200
    # The input's size and SHA-256 are shown; its block digests (binary) are not.
    assert running.input_sha256.encode() in detail.content
    assert b"Parquet block size" in detail.content
    assert b"Parquet block sha256" not in detail.content


def test_a_body_over_the_input_limit_is_a_413_before_it_is_read(batcher, iris, settings):
    """The declared length settles it: Django would spool the whole multipart body to disk
    (and this view read the file's header) before the upload's own size check."""
    settings.BATCH_MAX_INPUT_SIZE = 1024
    # Over the limit and its allowance for the form's other parts, and not a readable file:
    # read, it would be a 400 naming its missing columns.
    big = io.BytesIO(b"a,b\n" + b"1,2\n" * (300 * 1024))
    big.name = "rows.csv"
    response = batcher.post(URL, {"file": big}, format="multipart")
    assert response.status_code == 413, response.json()
    assert _field(response, "file")
    assert "BATCH_MAX_INPUT_SIZE" in response.json()["error"]["message"]
    assert not BatchJob.objects.exists()


def test_downloads_answer_the_media_types_the_schema_names_and_406_the_other(
    batcher, iris, eager, django_capture_on_commit_callbacks, settings
):
    """`Accept: application/octet-stream` (what generated clients send) or `text/csv` for a
    CSV file; a Parquet output asked for as CSV is a 406; the multipart type is matched
    case-insensitively, as RFC 9110 says media types are."""
    if not is_local():
        pytest.skip("the API streams the files only from a local folder")
    jobs = {}
    for output_format in ("csv", "parquet"):
        file = _parquet()
        with django_capture_on_commit_callbacks(execute=True):
            created = batcher.post(
                URL, {"file": file, "output_format": output_format}, format="multipart"
            )
        assert created.status_code == 202, created.content
        jobs[output_format] = created.json()["id"]
    raw = _parquet()
    from django.test.client import BOUNDARY, encode_multipart

    # Larger than the JSON body limit, which multipart bodies (files) are not held to.
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    upper = batcher.post(
        URL,
        encode_multipart(BOUNDARY, {"file": raw}),
        content_type=f"Multipart/Form-Data; boundary={BOUNDARY}",
    )
    assert upper.status_code == 202, upper.content

    csv_job, parquet_job = jobs["csv"], jobs["parquet"]
    for accept in ("application/octet-stream", "text/csv", "*/*"):
        answer = batcher.get(f"{URL}/{csv_job}/output", HTTP_ACCEPT=accept)
        assert answer.status_code == 200, (accept, answer.content)
        assert answer["Content-Type"] == "text/csv; charset=utf-8"
        errors = batcher.get(f"{URL}/{csv_job}/errors", HTTP_ACCEPT=accept)
        assert errors.status_code == 200 and errors["Content-Type"].startswith("text/csv")
    parquet = batcher.get(f"{URL}/{parquet_job}/output", HTTP_ACCEPT="application/octet-stream")
    assert (parquet.status_code, parquet["Content-Type"]) == (200, "application/octet-stream")
    refused = batcher.get(f"{URL}/{parquet_job}/output", HTTP_ACCEPT="text/csv")
    assert refused.status_code == 406
    assert refused.json()["error"]["type"] == "not_acceptable"
    assert batcher.get(f"{URL}/{parquet_job}/output", HTTP_ACCEPT="image/png").status_code == 406
    # Errors are JSON, labelled so, whatever was accepted.
    for accept in ("text/csv", "application/octet-stream"):
        gone = batcher.get(f"{URL}/999999/output", HTTP_ACCEPT=accept)
        assert gone.status_code == 404 and gone["Content-Type"] == "application/json"
