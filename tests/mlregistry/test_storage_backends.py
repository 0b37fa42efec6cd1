"""Artifacts on S3 (moto's server on loopback, through django-storages and boto3 unmocked):
storage URLs, uploads and loads through the store, the SHA-256-keyed read-through cache,
presigned download URLs, and pyarrow's ranged reads of stored files (bytes counted on the
wire by a relay in front of the server)."""

import hashlib
import io
import os
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage

from config.storage_urls import is_remote, storage_from_url
from mlregistry import artifacts
from mlregistry.storage import (
    ArtifactCache,
    arrow_input,
    arrow_input_open,
    get_artifact_storage,
    presigned_url,
)
from tests import factories
from tests.storage import BUCKET


@pytest.fixture
def s3_artifacts(settings, s3_server):
    entry = s3_server.storage_entry(BUCKET, f"{uuid.uuid4().hex[:12]}/artifacts")
    settings.STORAGES = {**settings.STORAGES, "artifacts": entry}
    return get_artifact_storage()


def test_storage_urls_choose_a_folder_or_a_bucket(tmp_path):
    default = tmp_path / "store"
    assert storage_from_url("", default_location=default, setting="X")["OPTIONS"] == {
        "location": str(default)
    }
    assert storage_from_url("/srv/a", default_location=default, setting="X")["OPTIONS"] == {
        "location": "/srv/a"
    }
    assert storage_from_url("file:///srv/b", default_location=default, setting="X")["OPTIONS"] == {
        "location": "/srv/b"
    }
    s3 = storage_from_url(
        "s3://bucket/some/prefix/",
        default_location=default,
        setting="X",
        endpoint_url="http://127.0.0.1:9000",
    )
    assert s3["BACKEND"] == "mlregistry.storage.S3ArtifactStorage"
    assert s3["OPTIONS"]["bucket_name"] == "bucket"
    assert s3["OPTIONS"]["location"] == "some/prefix"
    assert s3["OPTIONS"]["endpoint_url"] == "http://127.0.0.1:9000"
    assert is_remote(s3)
    assert not is_remote(storage_from_url("", default_location=default, setting="X"))


@pytest.mark.parametrize(
    "url, reason",
    [
        ("s3://", "needs a bucket"),
        ("s3://bucket/p?x=1", "no query string"),
        ("gs://bucket", "gs:// is not a storage"),
        ("relative/folder", "absolute path"),
    ],
)
def test_a_storage_url_that_names_no_store_is_refused_at_start_up(url, reason, tmp_path):
    with pytest.raises(ImproperlyConfigured, match=reason) as caught:
        storage_from_url(url, default_location=tmp_path, setting="ARTIFACT_STORAGE_URL")
    assert "ARTIFACT_STORAGE_URL" in str(caught.value)


@pytest.mark.django_db
def test_an_upload_lands_in_the_bucket_and_loads_verified(s3_artifacts, s3_server):
    from rest_framework.test import APIClient

    staff_api = APIClient()
    user = factories.staff_create(extra_perms=["add_batchjob"])
    staff_api.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.token_create(user)}")
    model = factories.registered_model_create("iris")
    version = factories.version_create(model, c=1.0)

    listed = s3_server.client().list_objects_v2(Bucket=BUCKET, Prefix=s3_artifacts.location)
    keys = [item["Key"] for item in listed.get("Contents", [])]
    assert keys == [f"{s3_artifacts.location}/{version.artifact.name}"]
    estimator = artifacts.load_version_estimator(version)
    assert estimator.predict(factories.iris_frame()[0][:3]).tolist()


@pytest.mark.django_db
def test_a_changed_object_in_the_bucket_is_refused_and_not_cached(s3_artifacts, settings, tmp_path):
    settings.ARTIFACT_CACHE_MAX_BYTES = 10 * 1024 * 1024
    from rest_framework.test import APIClient

    staff_api = APIClient()
    user = factories.staff_create(extra_perms=["add_batchjob"])
    staff_api.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.token_create(user)}")
    model = factories.registered_model_create("iris")
    version = factories.version_create(model, c=1.0)
    s3_artifacts.save(version.artifact.name, ContentFile(b"tampered"))

    with pytest.raises(artifacts.ArtifactIntegrityError, match="checksum mismatch"):
        artifacts.read_verified(version.artifact.name, version.artifact_sha256, what="v1")
    assert not list(Path(settings.ARTIFACT_CACHE_DIR).rglob("*"))


@pytest.mark.django_db
def test_the_read_through_cache_serves_verified_bytes_by_sha256(s3_artifacts, settings):
    settings.ARTIFACT_CACHE_MAX_BYTES = 10 * 1024 * 1024
    from rest_framework.test import APIClient

    staff_api = APIClient()
    user = factories.staff_create(extra_perms=["add_batchjob"])
    staff_api.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.token_create(user)}")
    model = factories.registered_model_create("iris")
    version = factories.version_create(model, c=1.0)
    name, sha256 = version.artifact.name, version.artifact_sha256

    first = artifacts.read_verified(name, sha256, what="v1")
    cached = Path(settings.ARTIFACT_CACHE_DIR) / sha256[:2] / sha256
    assert cached.read_bytes() == first
    # Served from the cache: the bucket is not asked again (its object may even be gone).
    s3_artifacts.delete(name)
    assert artifacts.read_verified(name, sha256, what="v1") == first

    # A damaged entry is never served: it is dropped and the store asked again.
    cached.write_bytes(b"bit rot")
    with pytest.raises(artifacts.ArtifactMissingError):
        artifacts.read_verified(name, sha256, what="v1")
    assert not cached.exists()


def test_the_cache_stays_within_its_bound_dropping_the_least_recently_used(tmp_path):
    cache = ArtifactCache(tmp_path, max_bytes=250)
    blobs = [bytes([i]) * 100 for i in range(3)]
    digests = [hashlib.sha256(blob).hexdigest() for blob in blobs]
    cache.put(digests[0], blobs[0])
    cache.put(digests[1], blobs[1])
    os.utime(cache.path(digests[1]), (1, 1))  # the oldest use
    assert cache.get(digests[0]) == blobs[0]
    cache.put(digests[2], blobs[2])

    assert cache.get(digests[1]) is None
    assert cache.get(digests[0]) == blobs[0]
    assert cache.get(digests[2]) == blobs[2]
    # Larger than the whole bound: not kept at all.
    big = b"x" * 300
    cache.put(hashlib.sha256(big).hexdigest(), big)
    assert sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()) <= 250
    with pytest.raises(ValueError):
        cache.path("../../etc/passwd")


@pytest.mark.django_db
def test_a_presigned_url_downloads_the_artifact_from_the_bucket(s3_artifacts):
    from rest_framework.test import APIClient

    staff_api = APIClient()
    user = factories.staff_create(extra_perms=["add_batchjob"])
    staff_api.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.token_create(user)}")
    model = factories.registered_model_create("iris")
    version = factories.version_create(model, c=1.0)

    url = presigned_url(version.artifact.name, filename="iris-v1.skops", expires_seconds=120)

    assert "X-Amz-Signature" in url and "X-Amz-Expires=120" in url
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read()
        disposition = response.headers["Content-Disposition"]
    assert hashlib.sha256(body).hexdigest() == version.artifact_sha256
    assert disposition == 'attachment; filename="iris-v1.skops"'


@pytest.mark.django_db
def test_a_local_store_has_no_presigned_url_the_caller_streams(settings):
    assert presigned_url("sha256/00/x.skops") is None


@pytest.mark.django_db
def test_parked_uploads_and_datasets_live_in_the_bucket(s3_artifacts, settings):
    from datetime import timedelta

    from rest_framework.test import APIClient

    from mlregistry import services

    staff_api = APIClient()
    user = factories.staff_create(extra_perms=["add_batchjob"])
    staff_api.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.token_create(user)}")
    model = factories.registered_model_create("iris")
    parked = services.model_version_preview(
        model=model, artifact=io.BytesIO(factories.iris_classifier_bytes(1.0)), actor="tests"
    )
    assert s3_artifacts.exists(parked.name)
    assert services.pending_uploads_prune(older_than=timedelta(seconds=-60), dry_run=True) == 1
    services.pending_upload_discard(name=parked.name)
    assert not s3_artifacts.exists(parked.name)

    dataset = factories.iris_dataset_create()
    assert s3_artifacts.exists(dataset.file.name)
    data = artifacts.read_verified(dataset.file.name, dataset.file_sha256, what="dataset")
    assert data.startswith(b"sepal_length")


# --- Ranged reads for pyarrow ------------------------------------------------------------------


def _row_groups_parquet(groups: int = 10, rows: int = 10_000) -> bytes:
    """Random floats in `groups` row groups: incompressible, so a group is ~1/groups of it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(7)
    table = pa.table({f"f{i}": rng.normal(size=groups * rows) for i in range(4)})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=rows)
    return sink.getvalue()


def _read_group(storage, name: str, index: int):
    import pyarrow.parquet as pq

    with arrow_input_open(storage, name) as source:
        parquet = pq.ParquetFile(source)
        return parquet.metadata.num_row_groups, parquet.read_row_group(index)


def test_a_row_group_of_a_parquet_file_on_s3_is_fetched_by_byte_ranges(
    s3_relayed, s3_relay, tmp_path
):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = _row_groups_parquet()
    name = s3_relayed.save("batch-jobs/inputs/rows.parquet", ContentFile(data))

    with arrow_input_open(s3_relayed, name) as source:
        assert isinstance(source, pa.NativeFile) and source.size() == len(data)
    before = s3_relay.served
    groups, table = _read_group(s3_relayed, name, 3)
    served = s3_relay.served - before

    # One row group of ten, its footer and the HTTP headers: far from the whole object.
    assert groups == 10
    assert served < len(data) / 5, (served, len(data))
    assert table.equals(pq.ParquetFile(pa.BufferReader(data)).read_row_group(3))
    local = FileSystemStorage(location=tmp_path)
    local.save(name, ContentFile(data))
    assert isinstance(arrow_input(local, name), str)
    assert _read_group(local, name, 3)[1].equals(table)


def test_a_missing_file_is_file_not_found_on_s3_as_on_a_local_folder(s3_relayed, tmp_path):
    with pytest.raises(FileNotFoundError):
        _read_group(s3_relayed, "batch-jobs/inputs/gone.parquet", 0)
    with pytest.raises(FileNotFoundError):
        _read_group(FileSystemStorage(location=tmp_path), "batch-jobs/inputs/gone.parquet", 0)


def test_a_child_forked_after_pyarrow_s3_started_reads_whole_objects_instead(s3_relayed, settings):
    """The AWS SDK for C++ is not fork-safe: a child that inherited it started must not use
    it. Forked for real, after this process read through it."""
    import pyarrow.parquet as pq
    from django.core.files.storage import storages

    data = _row_groups_parquet(groups=2, rows=100)
    name = s3_relayed.save("batch-jobs/inputs/forked.parquet", ContentFile(data))
    _read_group(s3_relayed, name, 0)
    expected = pq.read_table(io.BytesIO(data)).slice(100).to_pydict()

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            # A storage of its own: the parent's pooled HTTP connections are the parent's.
            storage = storages.create_storage(settings.STORAGES["artifacts"])
            with arrow_input_open(storage, name) as source:
                table = pq.ParquetFile(source).read_row_group(1)
                kind = type(source).__name__
            os.write(write_end, f"{kind} {table.to_pydict() == expected}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert report == "S3File True"


def test_an_object_store_that_does_not_answer_is_a_503_with_retry_after(db, settings):
    """The store on a loopback port nothing listens on (a real refused connection, no mock):
    an upload and a batch job's file are 503 storage_unavailable with Retry-After, never a
    500, and nothing is recorded."""
    import socket

    from botocore.config import Config
    from django.core.files.uploadedfile import SimpleUploadedFile
    from rest_framework.test import APIClient

    from mlregistry.models import ModelVersion
    from mlregistry.services import model_version_transition
    from predictions.models import BatchJob

    staff_api = APIClient()
    user = factories.staff_create(extra_perms=["add_batchjob"])
    staff_api.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.token_create(user)}")
    model = factories.registered_model_create("iris")
    version = factories.version_create(model)  # on the test's working folder
    model_version_transition(version=version, stage="production", actor="tests")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    entry = storage_from_url(
        "s3://gone/artifacts",
        default_location=Path("/nonexistent"),
        setting="tests",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
    )
    entry["OPTIONS"].update(
        access_key="testing",
        secret_key="testing",
        client_config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    settings.STORAGES = {**settings.STORAGES, "artifacts": entry}

    upload = staff_api.post(
        "/api/v1/models/iris/versions/",
        {"artifact": SimpleUploadedFile("m.skops", factories.iris_classifier_bytes(2.0))},
        format="multipart",
    )
    assert upload.status_code == 503, upload.content
    assert upload.json()["error"]["type"] == "storage_unavailable"
    assert int(upload["Retry-After"]) > 0
    assert ModelVersion.objects.count() == 1

    rows = b"sepal_length,sepal_width,petal_length,petal_width\n1,2,3,4\n"
    job = staff_api.post(
        "/api/v1/models/iris/batch-jobs",
        {"file": SimpleUploadedFile("rows.csv", rows)},
        format="multipart",
    )
    assert job.status_code == 503, job.content
    assert job.json()["error"]["type"] == "storage_unavailable"
    assert not BatchJob.objects.exists()
