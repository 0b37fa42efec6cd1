"""Decompression bombs (1 MB inflating to 1 GiB) in every archive the product opens: each is
refused with a 400 naming the member, and the worker's memory grows by less than 300 MB."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from django.core.files.storage import storages
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from backups import services as backups
from config.archives import ArchiveError, ArchiveLimits, ArchiveUnreadable, tar_check, zip_check
from mlregistry import artifacts
from mlregistry.models import ModelVersion
from quality import training
from quality.datasets import DatasetError
from quality.models import Dataset
from tests import bombs, factories

ROOT = Path(__file__).resolve().parents[2]
MEMORY_LIMIT_MB = 300
BACKUP_MEMBER = "sha256/ab/abcdef.skops"
NAMES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture(scope="session")
def bomb_files(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """Each bomb's file and the member its refusal must name, built once per session."""
    folder = tmp_path_factory.mktemp("bombs")
    skops = factories.iris_classifier_bytes()
    files = {}
    for kind, target, lie in (
        ("skops_array", "array", False),
        ("skops_schema", "schema.json", False),
        ("skops_lying", "array", True),
    ):
        path = folder / f"{kind}.skops"
        files[kind] = (path, bombs.skops_bomb(path, skops, target=target, lie=lie))
    bombs.parquet_rows_bomb(folder / "rows.parquet")
    files["parquet_rows"] = (folder / "rows.parquet", "134217728 rows")
    bombs.parquet_encoding_bomb(folder / "encoded.parquet")
    files["parquet_encoded"] = (folder / "encoded.parquet", "member 'rows ")
    backup = folder / "backup"
    backup.mkdir()
    bombs.tar_gz_bomb(backup / backups.ARTIFACTS_ARCHIVE, BACKUP_MEMBER)
    _manifest_for(backup)
    files["backup"] = (backup, BACKUP_MEMBER)
    return files


def _manifest_for(directory: Path) -> None:
    """A manifest whose checksums match the files: a crafted backup passes them."""
    database = directory / "database.sqlite3"
    database.write_bytes(b"not read: the archive is refused first")
    files = {}
    for path in (database, directory / backups.ARTIFACTS_ARCHIVE):
        data = path.read_bytes()
        files[path.name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    manifest = {
        "format": 1,
        "slot": "crafted",
        "created_at": "2026-01-01T00:00:00+00:00",
        "database": {"vendor": "sqlite", "file": database.name},
        "files": files,
        "artifacts": {BACKUP_MEMBER: {"sha256": "0" * 64, "size": bombs.GiB}},
        "row_counts": {},
        "migrations": [],
    }
    (directory / backups.MANIFEST_NAME).write_text(json.dumps(manifest))


def _uploader_api() -> APIClient:
    api = APIClient()
    user = factories.staff_create("uploader", extra_perms=["add_dataset"])
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.token_create(user)}")
    return api


def _stored_files() -> list[Path]:
    root = Path(storages["artifacts"].location)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


# --- each bomb is a 400 naming its member, and nothing is stored -------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("kind", ["skops_array", "skops_schema", "skops_lying"])
def test_skops_bomb_upload_is_400_naming_the_member(kind, bomb_files, iris_model):
    path, member = bomb_files[kind]
    response = _uploader_api().post(
        "/api/v1/models/iris/versions/",
        {"artifact": SimpleUploadedFile("model.skops", path.read_bytes())},
        format="multipart",
    )
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["type"] == "artifact_error"
    assert member in error["message"] and member in error["fields"]["artifact"][0]
    assert not ModelVersion.objects.exists() and _stored_files() == []


@pytest.mark.django_db
def test_stored_skops_bomb_is_refused_at_load_too(bomb_files, iris_model):
    path, member = bomb_files["skops_array"]
    with pytest.raises(artifacts.ArtifactError, match=member):
        artifacts.deserialize(path.read_bytes(), "skops")


@pytest.mark.django_db
@pytest.mark.parametrize("kind", ["parquet_rows", "parquet_encoded"])
def test_parquet_dataset_bomb_upload_is_400_naming_what_passed_the_limit(kind, bomb_files):
    path, member = bomb_files[kind]
    upload = io.BytesIO(path.read_bytes())
    upload.name = "data.parquet"
    response = _uploader_api().post(
        "/api/v1/datasets/",
        {"name": "bomb", "target_column": "y", "feature_columns": '["x"]', "file": upload},
        format="multipart",
    )
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert member in error["message"] and member in error["fields"]["file"][0]
    assert not Dataset.objects.exists() and _stored_files() == []


@pytest.mark.django_db
def test_parquet_bomb_stored_behind_the_upload_is_refused_when_read(bomb_files):
    path, _ = bomb_files["parquet_encoded"]
    dataset = training.dataset_create(
        name="small",
        actor="t",
        target_column="y",
        feature_columns=["x"],
        file=_small_parquet(),
        file_format="parquet",
    )
    data = path.read_bytes()
    name = storages["artifacts"].save("datasets/bomb.parquet", io.BytesIO(data))
    Dataset.objects.filter(pk=dataset.pk).update(
        file=name, file_sha256=hashlib.sha256(data).hexdigest()
    )
    dataset.refresh_from_db()
    from quality.datasets import dataset_load

    with pytest.raises(DatasetError) as refused:
        dataset_load(dataset)
    assert refused.value.problem == "file_too_large" and "rows " in refused.value.message


def _small_parquet() -> io.BytesIO:
    import pandas as pd

    buffer = io.BytesIO()
    pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [0, 1, 0]}).to_parquet(buffer)
    buffer.seek(0)
    buffer.name = "small.parquet"
    return buffer


def test_a_normal_parquet_dataset_still_reads_whole(db):
    dataset = training.dataset_create(
        name="ok",
        actor="t",
        target_column="y",
        feature_columns=["x"],
        file=_small_parquet(),
        file_format="parquet",
    )
    from quality.datasets import dataset_frame_read

    assert dataset_frame_read(dataset)["x"].tolist() == [1.0, 2.0, 3.0]


def test_backup_archive_bomb_fails_verification_naming_the_member(bomb_files, settings):
    directory, member = bomb_files["backup"]
    with pytest.raises(backups.BackupCorrupt) as refused:
        backups.backup_verify(path=directory)
    assert any(member in problem for problem in refused.value.problems)
    assert not Path(settings.MODEL_STORE_DIR).exists()  # nothing extracted


# --- memory: each bomb read in a fresh process ------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "reader"),
    [
        ("skops_array", "skops"),
        ("skops_schema", "skops"),
        ("skops_lying", "skops"),
        ("parquet_rows", "parquet"),
        ("parquet_encoded", "parquet"),
        ("backup", "backup"),
    ],
)
def test_each_bomb_costs_the_worker_less_than_300_mb(kind, reader, bomb_files):
    path, member = bomb_files[kind]
    result = subprocess.run(
        [sys.executable, "-m", "tests.rss_probe", reader, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert member in measured["error"], measured
    assert measured["growth_mb"] < MEMORY_LIMIT_MB, measured


# --- the checks themselves ---------------------------------------------------------------------


def _zip(members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _limits(**overrides) -> ArchiveLimits:
    values = {
        "max_member_size": 10 * bombs.MiB,
        "max_total_size": 20 * bombs.MiB,
        "max_ratio": 100,
        "ratio_grace_size": bombs.MiB,
    }
    return ArchiveLimits(**{**values, **overrides})


def test_small_members_may_compress_well_below_the_grace_size():
    zip_check(_zip({"a.npy": bytes(512 * 1024)}), what="z", field="f", limits=_limits())


def test_ratio_is_refused_past_the_grace_size():
    data = _zip({"ok.json": b"{}", "zeros.npy": bytes(4 * bombs.MiB)})
    with pytest.raises(ArchiveError, match=r"'zeros\.npy' inflates more than 100 times") as refused:
        zip_check(data, what="The file", field="artifact", limits=_limits())
    assert refused.value.member == "zeros.npy"
    assert refused.value.fields == {"artifact": [refused.value.message]}


def test_member_and_total_limits_apply_to_stored_members_too():
    noise = bytes(range(256)) * 4096  # 1 MiB
    stored = _zip({"a": noise * 3, "b": noise * 3}, compression=zipfile.ZIP_STORED)
    with pytest.raises(ArchiveError, match="'a' inflates to more than"):
        zip_check(stored, what="z", field="f", limits=_limits(max_member_size=2 * bombs.MiB))
    with pytest.raises(ArchiveError, match="'b' takes the archive past"):
        zip_check(stored, what="z", field="f", limits=_limits(max_total_size=5 * bombs.MiB))
    zip_check(stored, what="z", field="f", limits=_limits())


def test_limits_come_from_settings(settings):
    settings.ARCHIVE_MAX_RATIO = 2
    settings.ARCHIVE_RATIO_GRACE_SIZE = 0
    with pytest.raises(ArchiveError, match="ARCHIVE_MAX_RATIO"):
        zip_check(_zip({"x": bytes(1000)}), what="z", field="f")


def test_unreadable_archives_are_refused_as_such(tmp_path):
    with pytest.raises(ArchiveUnreadable):
        zip_check(b"not a zip", what="z", field="f")
    (tmp_path / "a.tar.gz").write_bytes(b"\x1f\x8bnot gzip")
    with pytest.raises(ArchiveUnreadable):
        tar_check(tmp_path / "a.tar.gz", what="t", field="f")


def test_a_plain_tar_is_checked_member_by_member(tmp_path):
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        for name in ("one", "two"):
            info = tarfile.TarInfo(name)
            info.size = bombs.MiB
            tar.addfile(info, io.BytesIO(bytes(bombs.MiB)))
    tar_check(archive, what="t", field="f", limits=_limits())
    with pytest.raises(ArchiveError, match="'two' takes the archive past"):
        tar_check(archive, what="t", field="f", limits=_limits(max_total_size=bombs.MiB + 1))
    with pytest.raises(ArchiveError, match="'one' inflates to more than"):
        tar_check(archive, what="t", field="f", limits=_limits(max_member_size=1000))


def test_a_tar_gz_stream_is_refused_once_it_inflates_past_the_ratio(tmp_path):
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("zeros")
        info.size = 4 * bombs.MiB
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    with pytest.raises(ArchiveError, match="'zeros' inflates more than 100 times"):
        tar_check(archive, what="t", field="f", limits=_limits())
    tar_check(archive, what="t", field="f", limits=_limits(max_ratio=10_000))
