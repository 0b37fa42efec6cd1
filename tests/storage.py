"""The backend the `storage` tests keep artifacts and backups on, and helpers that read those
storages through the storage API only, so a test says the same thing on a folder and on S3.

`TEST_STORAGE` chooses the backend of every test marked `storage` (`pytestmark`):
- `file` (the default): a local folder per test under its tmp_path, as a single server keeps;
- `s3`: a prefix of its own per test in one bucket on the loopback S3 server (`s3_server`,
  tests/s3.py: the one TEST_S3_ENDPOINT_URL names, else moto started for the run), with the
  read-through artifact cache on, as a deployment on S3 runs.
Tests without the marker keep their folders whatever TEST_STORAGE says.
"""

from __future__ import annotations

import copy
import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import Storage

from config.storage_urls import LOCAL_BACKEND, local_storage
from mlregistry.storage import get_artifact_storage, storage_walk

BACKENDS = ("file", "s3")
BACKEND = os.environ.get("TEST_STORAGE", "file").strip().lower() or "file"
ON_S3 = BACKEND == "s3"
# One bucket for the run; each test gets a prefix of its own in it (a bucket per test costs a
# request more and moto keeps every bucket until it stops).
BUCKET = "mlr-tests"
# The read-through cache on S3 (on by default for a remote store): ample for every artifact a
# test makes, so loads after the first are served from it, as on a deployment.
S3_CACHE_BYTES = 64 * 1024 * 1024

local_only = pytest.mark.skipif(
    ON_S3, reason="asserts on a local folder (paths, modes, inodes): TEST_STORAGE=s3 has none"
)


def backend_check() -> None:
    """Refuses a TEST_STORAGE the suite does not know (a typo would silently test folders)."""
    if BACKEND not in BACKENDS:
        raise pytest.UsageError(f"TEST_STORAGE={BACKEND!r}: expected one of {', '.join(BACKENDS)}")


def storages_isolate(overrides, tmp_path: Path, *, s3_server=None) -> None:
    """Points storages["artifacts"] and storages["backups"] at stores of this test's own, through
    `overrides` (pytest-django's `settings`): folders under `tmp_path`, or (with `s3_server`) a
    fresh prefix in BUCKET. BACKUP_DIR stays a local folder either way: backups are assembled
    there (and SQLite's slot locks live there)."""
    overrides.MODEL_STORE_DIR = tmp_path / "artifacts"
    overrides.BACKUP_DIR = tmp_path / "backups"
    overrides.ARTIFACT_CACHE_DIR = tmp_path / "artifact-cache"
    if s3_server is None:
        artifacts = local_storage(tmp_path / "artifacts")
        backups = local_storage(tmp_path / "backups", private=True)
        overrides.ARTIFACT_CACHE_MAX_BYTES = 0
    else:
        prefix = uuid.uuid4().hex[:16]
        artifacts = s3_server.storage_entry(BUCKET, f"{prefix}/artifacts")
        backups = s3_server.storage_entry(BUCKET, f"{prefix}/backups")
        overrides.ARTIFACT_CACHE_MAX_BYTES = S3_CACHE_BYTES
    overrides.STORAGES = {**overrides.STORAGES, "artifacts": artifacts, "backups": backups}


def is_local(name: str = "artifacts") -> bool:
    """Whether this test's storages[name] is a local folder."""
    return settings.STORAGES[name]["BACKEND"] == LOCAL_BACKEND


def store_digests(storage: Storage | None = None) -> dict[str, str]:
    """sha256 (hex) of every file in `storage` (the artifact storage by default), by name."""
    storage = storage or get_artifact_storage()
    digests = {}
    for name in storage_walk(storage):
        with storage.open(name, "rb") as handle:
            digests[name] = hashlib.sha256(handle.read()).hexdigest()
    return digests


def store_clear(storage: Storage | None = None) -> None:
    """Deletes every file of `storage` (the artifact storage by default): a lost server's."""
    storage = storage or get_artifact_storage()
    for name in list(storage_walk(storage)):
        storage.delete(name)


def store_read(name: str, storage: Storage | None = None) -> bytes:
    storage = storage or get_artifact_storage()
    with storage.open(name, "rb") as handle:
        return handle.read()


def store_write(name: str, data: bytes, storage: Storage | None = None) -> None:
    """Puts `data` under `name` as it is, replacing what is there: a fault or a tamper made on
    purpose below the product (the local backend's save would keep or repair by content)."""
    storage = storage or get_artifact_storage()
    try:
        path = Path(storage.path(name))
    except NotImplementedError:
        storage.save(name, ContentFile(data))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def store_corrupt(name: str, storage: Storage | None = None) -> None:
    """Flips one byte in the middle of stored file `name`."""
    data = bytearray(store_read(name, storage))
    data[len(data) // 2] ^= 0xFF
    store_write(name, bytes(data), storage)


def store_sibling(folder: Path, *, private: bool = False) -> dict[str, Any]:
    """A STORAGES entry for another, empty store on this test's backend (a new server's): the
    local `folder`, or a fresh prefix named after it in the same bucket."""
    if is_local():
        return local_storage(folder, private=private)
    entry = copy.deepcopy(settings.STORAGES["artifacts"])
    entry["OPTIONS"]["location"] = f"{uuid.uuid4().hex[:16]}/{folder.name}"
    return entry


def store_env(
    artifacts: dict[str, Any] | None = None, backups: dict[str, Any] | None = None
) -> dict[str, str]:
    """The environment a product process (a Celery worker, manage.py) needs to use these
    STORAGES entries (by default this test's artifact and backup storages) and this test's
    cache settings."""
    env = {
        "MODEL_STORE_DIR": str(settings.MODEL_STORE_DIR),
        "BACKUP_DIR": str(settings.BACKUP_DIR),
        "ARTIFACT_CACHE_DIR": str(settings.ARTIFACT_CACHE_DIR),
        "ARTIFACT_CACHE_MAX_BYTES": str(settings.ARTIFACT_CACHE_MAX_BYTES),
    }
    entries = {
        "ARTIFACT_STORAGE_URL": artifacts or settings.STORAGES["artifacts"],
        "BACKUP_STORAGE_URL": backups or settings.STORAGES["backups"],
    }
    for variable, entry in entries.items():
        options = entry["OPTIONS"]
        if entry["BACKEND"] == LOCAL_BACKEND:
            env[variable] = str(Path(options["location"]).resolve())
            continue
        env[variable] = f"s3://{options['bucket_name']}/{options['location']}"
        env.update(
            {
                "AWS_S3_ENDPOINT_URL": options["endpoint_url"],
                "AWS_ACCESS_KEY_ID": options["access_key"],
                "AWS_SECRET_ACCESS_KEY": options["secret_key"],
                "AWS_DEFAULT_REGION": options["region_name"],
            }
        )
    return env


def store_files(storage: Storage | None = None) -> list[str]:
    """Every file name in `storage` (the artifact storage by default); on a local folder the
    temporary files of writes in flight too, which storage_walk leaves out."""
    storage = storage or get_artifact_storage()
    try:
        root = Path(storage.path(""))
    except NotImplementedError:
        return list(storage_walk(storage))
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
