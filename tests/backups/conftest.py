import hashlib
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings

from mlregistry import artifacts, selectors, services
from mlregistry.models import Stage
from mlregistry.storage import get_artifact_storage
from tests import factories


def artifact_digests() -> dict[str, str]:
    """sha256 of every file in the artifact store, by path relative to it."""
    root = Path(settings.MODEL_STORE_DIR)
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


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
