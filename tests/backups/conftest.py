import json
from pathlib import Path

import numpy as np
import pytest

from backups import services as backups
from backups.models import Backup
from backups.services import BackupLocation
from mlregistry import artifacts, selectors, services
from mlregistry.models import Stage
from mlregistry.storage import get_artifact_storage, get_backup_storage
from tests import factories
from tests.storage import is_local, store_digests, store_read, store_write


def artifact_digests() -> dict[str, str]:
    """sha256 of every file in the artifact storage, by name."""
    return store_digests()


def backup_ref(backup: Backup) -> BackupLocation | Path:
    """How an operator names a stored backup to verify or restore: its folder on a local
    backup store (a path), its location in a bucket."""
    if is_local("backups"):
        return backups.backup_directory(backup)
    return backups.backup_location(backup)


def backup_read(backup: Backup, filename: str) -> bytes:
    return store_read(backups.backup_location(backup).file(filename), get_backup_storage())


def backup_write(backup: Backup, filename: str, data: bytes) -> None:
    """Replaces one file of a stored backup as it is: damage done on purpose."""
    store_write(backups.backup_location(backup).file(filename), data, get_backup_storage())


def backup_manifest(backup: Backup) -> dict:
    return json.loads(backup_read(backup, backups.MANIFEST_NAME))


def backup_folders() -> list[str]:
    """The backup folders in the backup storage (a local store also holds dot-named spool and
    lock folders: those are not backups)."""
    try:
        folders, _ = get_backup_storage().listdir("")
    except FileNotFoundError:
        return []
    return sorted(name for name in folders if not name.startswith("."))


def production_predictions(model_name: str) -> np.ndarray:
    """What the production version predicts on iris, loaded the way serving loads it."""
    model = selectors.registered_model_get(name=model_name)
    version = selectors.production_version_get(model=model)
    with get_artifact_storage().open(version.artifact.name, "rb") as handle:
        data = handle.read()
    artifacts.verify_sha256(data, version.artifact_sha256)
    estimator = artifacts.deserialize(data, version.artifact_format)
    features, _ = factories.iris_frame()
    return estimator.predict_proba(features)


@pytest.fixture
def registry():
    """Two models, three versions (one in production), so a restore has something to check."""
    iris = factories.registered_model_create("iris")
    first = factories.version_create(iris, c=1.0)
    services.model_version_transition(version=first, stage=Stage.PRODUCTION, actor="tests")
    factories.version_create(iris, c=0.1)
    other = factories.registered_model_create("iris-other")
    second = factories.version_create(other, c=3.0)
    services.model_version_transition(version=second, stage=Stage.STAGING, actor="tests")
    return iris
