"""Benchmark set-up, run by bench/run.py in the product's environment: trains the two models,
registers and promotes them, makes a client token, and measures in-process scikit-learn.

Prints one JSON object on the last line of stdout.
"""

import io
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import skops.io as sio  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from knox.models import AuthToken  # noqa: E402
from sklearn.datasets import make_classification  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from mlregistry import services  # noqa: E402
from mlregistry.models import RegisteredModel, Stage  # noqa: E402
from predictions.loader import ModelCache  # noqa: E402
from predictions.serving import version_info  # noqa: E402

FEATURES = [f"f{i}" for i in range(20)]
MODELS = {"bench-lr": "logistic regression pipeline", "bench-rf": "random forest, 100 trees"}


def _train():
    x, y = make_classification(
        n_samples=4000, n_features=20, n_informative=10, n_classes=3, random_state=0
    )
    frame = pd.DataFrame(x, columns=FEATURES)
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(frame, y)
    rf = RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=1).fit(frame, y)
    return frame, {"bench-lr": lr, "bench-rf": rf}


def _register(name, estimator, actor):
    existing = RegisteredModel.objects.filter(name=name).first()
    if existing is not None:
        for version in existing.versions.filter(stage=Stage.PRODUCTION):
            services.model_version_transition(version=version, stage=Stage.ARCHIVED, actor=actor)
        services.registered_model_delete(model=existing, actor=actor)
    model = services.registered_model_create(name=name, actor=actor)
    data = sio.dumps(estimator)
    version = services.model_version_create(model=model, artifact=io.BytesIO(data), actor=actor)
    services.model_version_transition(version=version, stage=Stage.PRODUCTION, actor=actor)
    return version, data


def _rate(fn, *, seconds=1.0):
    fn()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        fn()
        count += 1
    return count / (time.perf_counter() - started)


def _in_process(estimator, frame):
    rng = np.random.default_rng(1)
    one = rng.normal(size=(1, 20))
    one_frame = pd.DataFrame(one, columns=FEATURES)
    out = {}

    def both(x):
        estimator.predict(x)
        estimator.predict_proba(x)

    out["single_array_per_s"] = _rate(lambda: both(one))
    out["single_frame_per_s"] = _rate(lambda: both(one_frame))
    for rows in (100, 1000):
        batch = rng.normal(size=(rows, 20))
        out[f"batch{rows}_rows_per_s"] = _rate(lambda b=batch: both(b)) * rows
    return out


def main():
    out_dir = Path(sys.argv[1])
    actor = "bench"
    frame, estimators = _train()
    user, _ = User.objects.get_or_create(username="bench-client")
    token = AuthToken.objects.create(user=user)[1]
    result = {"token": token, "features": FEATURES, "models": {}}
    for name, estimator in estimators.items():
        version, data = _register(name, estimator, actor)
        path = out_dir / f"{name}.skops"
        path.write_bytes(data)
        cold = []
        for _ in range(3):
            started = time.perf_counter()
            ModelCache()._load(version_info(version), model_name=name)
            cold.append(time.perf_counter() - started)
        result["models"][name] = {
            "description": MODELS[name],
            "file": str(path),
            "artifact_bytes": len(data),
            "cold_load_s": min(cold),
            "in_process": _in_process(estimator, frame),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
