"""Backups, restore and the artifact sweep through the storage API only: the drill runs with
the artifact and backup storages on Django's InMemoryStorage (no disk at all) and on S3
(moto's server on loopback, through django-storages and boto3 unmocked), and a backup made on
one backend restores into the other with identical SHA-256s."""

import uuid
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.utils import timezone

from backups import services
from config.storage_urls import local_storage
from mlregistry import retention
from mlregistry.models import ModelVersion, RegisteredModel, StageTransition
from mlregistry.storage import get_artifact_storage, get_backup_storage, storage_walk
from tests.backups.conftest import production_predictions
from tests.storage import BUCKET, store_clear, store_digests

pytestmark = pytest.mark.django_db(transaction=True)


def _entry(kind: str, role: str, tmp_path: Path, request) -> dict:
    if kind == "file":
        return local_storage(tmp_path / f"{role}-store", private=role == "backups")
    if kind == "memory":
        return {"BACKEND": "django.core.files.storage.InMemoryStorage"}
    server = request.getfixturevalue("s3_server")
    return server.storage_entry(BUCKET, f"{uuid.uuid4().hex[:12]}/{role}")


def _use(settings, *, artifacts: dict | None = None, backups: dict | None = None) -> None:
    settings.STORAGES = {
        **settings.STORAGES,
        **({"artifacts": artifacts} if artifacts else {}),
        **({"backups": backups} if backups else {}),
    }


def _wipe() -> None:
    """A lost server: no registry rows, an empty artifact storage."""
    StageTransition.objects.all().delete()
    ModelVersion.objects.all().delete()
    RegisteredModel.objects.all().delete()
    store_clear()


@pytest.fixture(params=["memory", "s3"])
def backend(request, settings, tmp_path):
    """Artifacts and backups both on the parametrised backend, before any row is made."""
    _use(
        settings,
        artifacts=_entry(request.param, "artifacts", tmp_path, request),
        backups=_entry(request.param, "backups", tmp_path, request),
    )
    return request.param


def test_backup_wipe_restore_drill_runs_on_any_storage_backend(backend, tmp_path, request):
    registry = request.getfixturevalue("registry")
    assert registry.versions.count() == 2
    digests = store_digests()
    assert len(digests) == 3
    counts = services.registry_row_counts()
    predictions = production_predictions("iris")

    backup = services.backup_create(actor="tests")
    assert get_backup_storage().exists(f"{backup.path}/manifest.json")
    _wipe()
    assert store_digests() == {}
    result = services.backup_restore(
        directory=services.backup_location(backup), backup=backup, actor="tests"
    )

    assert result.mismatches == []
    assert store_digests() == digests
    assert services.registry_row_counts() == counts
    np.testing.assert_array_equal(production_predictions("iris"), predictions)
    # Nothing reached the local folders the file backends would use: no path touched the disk
    # (the local spool is emptied; only SQLite's slot lock files may stay).
    assert not (tmp_path / "artifacts").exists()
    leftovers = [p for p in (tmp_path / "backups").rglob("*") if p.is_file()]
    assert all(p.parent.name == ".locks" for p in leftovers), leftovers
    # Retention deletes the expired backup's files from the same storage.
    services.backup_create(slot="newer", actor="tests")
    deleted = services.backup_retention_apply(now=timezone.now() + timedelta(days=30))
    assert deleted == [backup.pk]
    assert not any(storage_walk(get_backup_storage(), backup.path))


def test_sweep_runs_on_any_storage_backend(backend, request):
    request.getfixturevalue("registry")
    storage = get_artifact_storage()
    referenced = set(ModelVersion.objects.values_list("artifact", flat=True))
    orphan = storage.save("sha256/00/orphan.skops", ContentFile(b"left by a deleted version"))
    parked = storage.save("pending/tok/abc.upload", ContentFile(b"not the sweep's"))

    # Files are judged by the storage's own modification time: an hour must pass first.
    assert retention.artifacts_sweep() == []
    later = timezone.now() + timedelta(hours=2)
    assert retention.artifacts_sweep(now=later, dry_run=True) == [orphan]
    assert storage.exists(orphan)
    assert retention.artifacts_sweep(now=later) == [orphan]

    assert not storage.exists(orphan)
    assert storage.exists(parked)
    assert all(storage.exists(name) for name in referenced)


@pytest.mark.parametrize("first, second", [("file", "s3"), ("s3", "file")])
def test_a_backup_restores_across_backends_with_identical_sha256s(
    first, second, settings, tmp_path, request
):
    _use(
        settings,
        artifacts=_entry(first, "artifacts", tmp_path, request),
        backups=_entry(first, "backups", tmp_path, request),
    )
    request.getfixturevalue("registry")
    digests = store_digests()
    predictions = production_predictions("iris")
    backup = services.backup_create(actor="tests")
    location = services.backup_location(backup)

    # The new server: the other backend for artifacts, starting empty.
    _use(settings, artifacts=_entry(second, "artifacts", tmp_path / "new", request))
    assert store_digests() == {}
    services.backup_restore(directory=location, backup=backup, actor="tests")

    assert type(get_artifact_storage()).__name__ == (
        "S3ArtifactStorage" if second == "s3" else "AtomicFileSystemStorage"
    )
    assert store_digests() == digests
    np.testing.assert_array_equal(production_predictions("iris"), predictions)


def test_a_backup_copied_from_a_local_folder_is_stored_in_the_backup_bucket(
    settings, tmp_path, request
):
    """Disaster recovery onto S3: the backup comes back as a local folder (an off-site copy)
    and is restored; the catalogue row then names a folder in the bucket."""
    request.getfixturevalue("registry")
    backup = services.backup_create(slot="drill", actor="tests")
    folder = services.backup_directory(backup)
    _use(
        settings,
        artifacts=_entry("s3", "artifacts", tmp_path, request),
        backups=_entry("s3", "backups", tmp_path, request),
    )
    found, location = services.backup_resolve(str(folder))
    assert found is None
    services.backup_restore(directory=location, actor="tests")

    row = services.Backup.objects.get(slot="drill")
    assert storages["backups"].exists(f"{row.path}/manifest.json")
    assert services.backup_verify(backup=row)["artifacts"]
    assert str(services.backup_location(row)).startswith(f"s3://{BUCKET}/")


def test_backups_in_a_local_folder_are_readable_by_their_owner_only(request):
    """A dump holds password hashes and token digests."""
    request.getfixturevalue("registry")
    backup = services.backup_create(actor="tests")
    folder = services.backup_directory(backup)

    assert folder.stat().st_mode & 0o777 == 0o700
    assert {path.stat().st_mode & 0o777 for path in folder.iterdir()} == {0o600}
