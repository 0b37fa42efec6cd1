"""How fast the registry's list filters answer over 10,000 versions of one model (target on
PostgreSQL: under 50 ms per request, the whole API request included).

Builds a scratch test database (as the test runner does: test_<name>, dropped at the end),
fills one model with BENCH_VERSIONS versions (tags, stages, run ids, a few aliases; rows
inserted directly, with one shared artifact name: the filters never open an artifact), and
times each filter through the API (the test client: routing, authentication, serializers,
pagination) BENCH_REPEAT times. Prints the median and p95 per filter in ms.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/mlr_registry .venv/bin/python \
        bench/registry_filters.py
"""

import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django

django.setup()

from django.db import connection  # noqa: E402
from django.test.utils import setup_databases, setup_test_environment, teardown_databases  # noqa: E402
from rest_framework.test import APIClient  # noqa: E402

VERSIONS = int(os.environ.get("BENCH_VERSIONS", "10000"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "30"))
TARGET_MS = 50.0

FILTERS = {
    "no filter (first page)": "",
    "?tag=validated:true": "tag=validated:true",
    "?tag=team:risk&tag=validated:true": "tag=team:risk&tag=validated:true",
    "?tag=rare (has the key)": "tag=rare",
    "?stage=staging": "stage=staging",
    "?alias=champion": "alias=champion",
    "?alias=latest": "alias=latest",
    "?run_id=run-4242": "run_id=run-4242",
    "?tag=validated:true&stage=staging&alias=champion": (
        "tag=validated:true&stage=staging&alias=champion"
    ),
}


def _fill() -> str:
    from django.test import override_settings

    from mlregistry.models import ModelAlias, ModelVersion, RegisteredModel, Stage
    from tests import factories

    rng = random.Random(7)
    with override_settings(CELERY_TASK_ALWAYS_EAGER=True):
        staff = factories.staff_create("bench")
    token = factories.token_create(staff)
    for other in range(20):  # other models' rows share the table, as in a real registry
        RegisteredModel.objects.create(name=f"other-{other}", tags={"team": "other"})
    model = RegisteredModel.objects.create(name="churn", tags={"team": "risk"})
    stages = [Stage.NONE] * 6 + [Stage.STAGING] * 3 + [Stage.ARCHIVED]
    rows = []
    for number in range(1, VERSIONS + 1):
        tags = {"validated": rng.choice(["true", "false"]), "team": rng.choice(["risk", "ops"])}
        if number % 1000 == 0:
            tags["rare"] = "yes"
        rows.append(
            ModelVersion(
                model=model,
                version=number,
                stage=rng.choice(stages),
                artifact="sha256/00/bench.skops",
                artifact_sha256="0" * 64,
                artifact_size=1,
                tags=tags,
                run_id=f"run-{number}",
            )
        )
    ModelVersion.objects.bulk_create(rows, batch_size=2000)
    model.last_version_number = VERSIONS
    model.save(update_fields=["last_version_number"])
    staged = ModelVersion.objects.filter(model=model, stage=Stage.STAGING, tags__validated="true")
    target = staged.order_by("-version").first()
    ModelAlias.objects.create(model=model, alias="champion", version=target)
    ModelAlias.objects.create(
        model=model, alias="shadow", version=ModelVersion.objects.get(model=model, version=42)
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE") if connection.vendor == "postgresql" else None
    return token


def _median_ms(fn) -> tuple[float, float]:
    samples = []
    for _ in range(REPEAT):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(0.95 * (len(samples) - 1))]


def _db_only(query: str):
    """The filter's own database work: the page's rows and the count, as the view asks."""
    from django.http import QueryDict

    from mlregistry import selectors
    from mlregistry.serializers import ModelVersionListQueryInput
    from mlregistry.views import _renamed_tags

    params = ModelVersionListQueryInput(data=QueryDict(query))
    params.is_valid(raise_exception=True)
    model = selectors.registered_model_get(name="churn")

    def run():
        versions = selectors.model_versions_list(model=model, **_renamed_tags(params))
        versions.count()
        list(versions[:50])

    return run


def main() -> None:
    setup_test_environment()
    names = setup_databases(verbosity=0, interactive=False)
    try:
        token = _fill()
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")

        def get(url):
            def run():
                response = client.get(url)
                assert response.status_code == 200, response.content

            return run

        get("/api/v1/models/churn/")()
        base, _ = _median_ms(get("/api/v1/models/churn/"))
        print(f"{connection.vendor}: {VERSIONS} versions of one model, {REPEAT} requests each")
        print(f"baseline GET /api/v1/models/churn/ (one object, no list): {base:.1f} ms")
        print(f"{'filter':50} {'rows':>6} {'request ms':>10} {'p95':>7} {'x base':>7} {'db ms':>7}")
        worst = 0.0
        for label, query in FILTERS.items():
            url = f"/api/v1/models/churn/versions/?{query}"
            rows = client.get(url).json()["count"]
            median, p95 = _median_ms(get(url))
            db, _ = _median_ms(_db_only(query))
            worst = max(worst, median)
            print(
                f"{label:50} {rows:>6} {median:>10.1f} {p95:>7.1f} {median / base:>7.1f} {db:>7.1f}"
            )
        models = "/api/v1/models/?tag=team:risk&search=churn"
        median, p95 = _median_ms(get(models))
        print(f"{'models ?tag=team:risk&search=churn':50} {'':>6} {median:>10.1f} {p95:>7.1f}")
        verdict = "under" if worst < TARGET_MS else "OVER"
        print(
            f"slowest filter median {worst:.1f} ms: {verdict} the {TARGET_MS:.0f} ms target "
            f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs while measuring)"
        )
    finally:
        teardown_databases(names, verbosity=0)


if __name__ == "__main__":
    main()
