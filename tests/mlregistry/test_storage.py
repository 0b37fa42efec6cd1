"""Content-addressed files are kept only when their bytes are the content: uploading the good
bytes again repairs a corrupted artifact or dataset file, atomically and logged."""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.files.uploadedfile import SimpleUploadedFile

from mlregistry import artifacts, services
from predictions.loader import model_cache
from quality.datasets import dataset_frame_read
from tests import factories
from tests.storage import is_local, local_only, store_corrupt, store_read, store_write

pytestmark = [pytest.mark.django_db, pytest.mark.storage]

IRIS_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


@pytest.fixture(autouse=True)
def _serving_state(settings):
    """As tests/predictions does: no log flusher thread (it would write outside the test's
    transaction), no model cached from another test."""
    from predictions.logbuffer import prediction_log_buffer

    settings.PREDICTION_LOG_FLUSH_SECONDS = 0
    settings.PREDICTION_LOG_FLUSH_ROWS = 100_000
    model_cache.clear()
    prediction_log_buffer.clear()
    yield
    prediction_log_buffer.clear()


def _temporary_files() -> list[Path]:
    if not is_local():
        return []  # an object store writes a whole object or none: no temporary files
    return list(Path(storages["artifacts"].location).rglob(".tmp-*"))


def test_reuploading_the_good_bytes_repairs_a_corrupted_artifact(
    staff_api, client_api, iris_model, caplog
):
    version = factories.version_create(iris_model)
    store_corrupt(version.artifact.name)
    url = f"/api/v1/models/iris/versions/{version.version}/predict"
    assert client_api.post(url, {"features": IRIS_ROW}, format="json").status_code == 503

    with caplog.at_level(logging.WARNING, logger="mlregistry.storage"):
        response = staff_api.post(
            "/api/v1/models/iris/versions/",
            {"artifact": SimpleUploadedFile("m.skops", factories.iris_classifier_bytes())},
            format="multipart",
        )
    assert response.status_code == 201, response.json()
    assert response.json()["artifact_sha256"] == version.artifact_sha256
    assert hashlib.sha256(store_read(version.artifact.name)).hexdigest() == version.artifact_sha256
    if is_local():
        # The folder compares before it writes; S3 (file_overwrite) always writes the object.
        assert any("replacing it" in r.getMessage() for r in caplog.records)
    assert client_api.post(url, {"features": IRIS_ROW}, format="json").status_code == 200
    assert _temporary_files() == []


@local_only
def test_an_intact_file_is_kept_as_it_is(iris_model, caplog):
    version = factories.version_create(iris_model)
    path = Path(storages["artifacts"].path(version.artifact.name))
    inode = path.stat().st_ino
    with caplog.at_level(logging.WARNING, logger="mlregistry.storage"):
        factories.version_create(iris_model)
    assert path.stat().st_ino == inode  # not rewritten
    assert not [r for r in caplog.records if r.name == "mlregistry.storage"]


def test_a_confirmed_preview_repairs_the_stored_file_too(iris_model):
    version = factories.version_create(iris_model)
    store_corrupt(version.artifact.name)
    pending = services.model_version_preview(
        model=iris_model, artifact=io.BytesIO(factories.iris_classifier_bytes()), actor="t"
    )
    with storages["artifacts"].open(pending.name, "rb") as parked:
        services.model_version_create(
            model=iris_model,
            artifact=parked,
            actor="t",
            expected_sha256=pending.inspection.sha256,
        )
    assert hashlib.sha256(store_read(version.artifact.name)).hexdigest() == version.artifact_sha256
    assert artifacts.load_version_estimator(version) is not None


def test_reuploading_a_dataset_repairs_its_corrupted_file():
    dataset = factories.iris_dataset_create("first")
    store_corrupt(dataset.file.name)
    with pytest.raises(Exception, match="checksum mismatch"):
        dataset_frame_read(dataset)
    again = factories.iris_dataset_create("second")
    assert again.file.name == dataset.file.name
    assert len(dataset_frame_read(dataset)) == 150


def test_the_storage_replaces_any_name_whose_bytes_differ():
    storage = storages["artifacts"]
    name = storage.save("sha256/aa/x.bin", ContentFile(b"good bytes"))
    store_write(name, b"bad bytes!")
    assert storage.save(name, ContentFile(b"good bytes")) == name
    assert store_read(name) == b"good bytes"


def test_a_stored_files_sha256_is_its_bytes_hash_on_either_backend():
    from mlregistry.storage import stored_sha256

    storage = storages["artifacts"]
    data = bytes(range(256)) * 70_000  # 17.9 MB: more than one mapped block
    for name, content in (("hash/big.bin", data), ("hash/empty.bin", b"")):
        storage.save(name, ContentFile(content))
        assert stored_sha256(storage, name) == hashlib.sha256(content).hexdigest()
    with pytest.raises(FileNotFoundError):
        stored_sha256(storage, "hash/absent.bin")


def test_a_movable_file_is_saved_whole_and_its_temporary_copy_is_gone(tmp_path):
    from mlregistry.storage import MovableFile

    storage = storages["artifacts"]
    data = b"merged output " * 10_000
    try:
        near = Path(storage.path("moved/out.bin")).parent
    except NotImplementedError:
        near = tmp_path  # an object store reads it like any other content
    near.mkdir(parents=True, exist_ok=True)
    written = near / ".tmp-merged"
    written.write_bytes(data)
    with MovableFile(str(written)) as content:
        assert storage.save("moved/out.bin", content) == "moved/out.bin"
    assert store_read("moved/out.bin") == data
    if is_local():
        assert not written.exists()  # renamed into place, not copied
        assert Path(storage.path("moved/out.bin")).stat().st_mode & 0o777 == 0o644


@local_only
def test_a_movable_file_that_cannot_be_renamed_there_is_copied(tmp_path, monkeypatch):
    """A rename cannot cross filesystems (EXDEV): injected on purpose, as a file on another
    disk or a bind mount would fail."""
    import errno

    from mlregistry import storage as storage_module
    from mlregistry.storage import MovableFile

    storage = storages["artifacts"]
    written = tmp_path / "merged"
    written.write_bytes(b"other disk")
    real_replace = storage_module.os.replace

    def replace(source, target):
        if str(source) == str(written):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(source, target)

    monkeypatch.setattr(storage_module.os, "replace", replace)
    with MovableFile(str(written)) as content:
        storage.save("moved/copied.bin", content)
    assert written.read_bytes() == b"other disk"  # still the caller's
    assert store_read("moved/copied.bin") == b"other disk"


@local_only
def test_a_work_folder_sits_beside_its_target_and_a_crashs_leftover_goes_with_the_folder():
    from mlregistry.storage import storage_delete_folder, storage_walk, storage_work_folder

    storage = storages["artifacts"]
    storage.save("jobs/7/kept.bin", ContentFile(b"kept"))
    work = storage_work_folder(storage, "jobs/7/output.parquet")
    left = Path(work.name) / "merged"
    left.write_bytes(b"half a merge")  # the writer was killed before it saved
    assert left.parent.parent == Path(storage.path("jobs/7"))
    assert list(storage_walk(storage, "jobs")) == ["jobs/7/kept.bin"]  # backups skip it
    assert storage_delete_folder(storage, "jobs/7") == 1
    assert not Path(storage.path("jobs/7")).exists()
    work.cleanup()


def test_write_behind_flushes_while_the_file_grows_and_keeps_what_was_written(tmp_path):
    """Each nudge starts a flush unless one is running; the writer's bytes are untouched and
    the file is there for the writer to open when WriteBehind created it."""
    from mlregistry.storage import WriteBehind

    path = tmp_path / "merged"
    with WriteBehind(str(path)) as disk:
        assert path.exists() and path.stat().st_size == 0
        with open(path, "ab") as out:
            for block in range(5):
                out.write(bytes([block]) * 1_000_000)
                out.flush()
                disk.nudge()
    assert path.read_bytes() == b"".join(bytes([b]) * 1_000_000 for b in range(5))


def test_write_behind_raises_a_failed_flush_and_does_nothing_when_not_durable(
    tmp_path, monkeypatch
):
    """A disk error in the background flush is raised, at the next nudge or at the block's
    end: Linux reports it once per open file, so the final fsync through another could miss
    it. Fault injected on purpose: the flush fails with EIO."""
    import errno

    from mlregistry.storage import WriteBehind

    def broken(fd):
        raise OSError(errno.EIO, "Input/output error")

    path = tmp_path / "merged"
    disk = WriteBehind(str(path))
    monkeypatch.setattr(disk, "_sync", broken)
    with pytest.raises(OSError, match="Input/output"), disk:
        disk.nudge()
    disk = WriteBehind(str(path))
    monkeypatch.setattr(disk, "_sync", broken)
    with pytest.raises(OSError, match="Input/output"), disk:
        disk.nudge()
        disk._running.exception()  # the first flush has failed
        disk.nudge()
    scratch = tmp_path / "scratch"
    with WriteBehind(str(scratch), durable=False) as idle:
        monkeypatch.setattr(idle, "_sync", broken)
        idle.nudge()  # nothing to flush: no error, no file
    assert not scratch.exists()


def test_only_a_folder_storage_fsyncs_what_it_saves():
    from django.core.files.storage import FileSystemStorage

    from mlregistry.storage import storage_fsyncs

    assert storage_fsyncs(storages["artifacts"]) is is_local()
    assert not storage_fsyncs(FileSystemStorage())  # Django's own writes without fsync
