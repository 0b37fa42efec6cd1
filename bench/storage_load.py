"""Cold loads from S3: the first fetch of the benchmark's random forest from an S3-compatible
store (moto's server on loopback, tests/s3.py), and a replica's cold load after it, served by
the SHA-256-keyed local read-through cache (mlregistry/storage.py). The local folder store is
the reference. A figure, not a timed test: `make bench` prints it.

Each "cold load" is what a replica does for a version it has never served: read the artifact
(store or cache), verify its SHA-256, deserialise it with skops; the process-level model cache
is empty each time. Target: cached cold load of the ~10 MB forest <= 1 s.
"""

import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REPEATS = 5


def main() -> None:
    from tests.s3 import s3_server_start

    server = s3_server_start()
    work = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    try:
        os.environ.update(
            {
                **server.env("bench", "run"),
                "DJANGO_SETTINGS_MODULE": "config.settings",
                "DATABASE_URL": f"sqlite:///{work / 'db.sqlite3'}",
                "VAR_DIR": str(work / "var"),
                "MODEL_STORE_DIR": str(work / "artifacts"),
                "ARTIFACT_CACHE_DIR": str(work / "cache"),
                "LOG_LEVEL": "WARNING",
            }
        )
        os.environ.pop("REDIS_URL", None)
        _measure(work)
    finally:
        server.stop()


def _measure(work: Path) -> None:
    import django

    django.setup()
    import shutil

    import skops.io as sio
    from django.conf import settings
    from django.core.management import call_command
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    from mlregistry import artifacts, services
    from mlregistry.storage import get_artifact_storage

    call_command("migrate", verbosity=0)
    x, y = make_classification(
        n_samples=4000, n_features=20, n_informative=10, n_classes=3, random_state=0
    )
    forest = RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=1).fit(x, y)
    data = sio.dumps(forest)
    model = services.registered_model_create(name="bench-rf", actor="bench")
    version = services.model_version_create(model=model, artifact=io.BytesIO(data), actor="bench")
    name, sha256 = version.artifact.name, version.artifact_sha256
    backend = type(get_artifact_storage()).__name__

    def cold_load() -> float:
        started = time.perf_counter()
        raw = artifacts.read_verified(name, sha256, what="bench-rf v1")
        artifacts.deserialize_estimator(raw, version.artifact_format, what="bench-rf v1")
        return time.perf_counter() - started

    first = []
    for _ in range(REPEATS):
        shutil.rmtree(settings.ARTIFACT_CACHE_DIR, ignore_errors=True)
        first.append(cold_load())
    cached = [cold_load() for _ in range(REPEATS)]
    settings.ARTIFACT_CACHE_MAX_BYTES = 0
    uncached = [cold_load() for _ in range(REPEATS)]

    # The reference: the same bytes from the local folder store.
    local = work / "local-store"
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": "mlregistry.storage.AtomicFileSystemStorage",
            "OPTIONS": {"location": str(local)},
        },
    }
    from django.core.files.base import ContentFile
    from django.core.files.storage import storages

    storages._storages.pop("artifacts", None)
    get_artifact_storage().save(name, ContentFile(data))
    folder = [cold_load() for _ in range(REPEATS)]

    median = statistics.median
    print(
        f"Cold load of the random forest ({len(data) / 1e6:.1f} MB skops, {backend} on moto, "
        f"median of {REPEATS}):"
    )
    rows = [
        ("first fetch from S3 (empty disk cache)", median(first)),
        ("S3, read-through cache warm", median(cached)),
        ("S3, cache off (every load a GET)", median(uncached)),
        ("local folder store (reference)", median(folder)),
    ]
    for label, seconds in rows:
        print(f"  {label:42s} {seconds * 1000:8.0f} ms")
    print(
        f"  cached / local folder: {median(cached) / median(folder):.2f}x; "
        f"first fetch / cached: {median(first) / median(cached):.2f}x; "
        f"target cached <= 1000 ms: {'met' if median(cached) <= 1.0 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
