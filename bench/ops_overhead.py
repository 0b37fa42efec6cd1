"""Per-request cost of the cross-cutting checks on the predict path.

Measures, in-process against the configured cache (set REDIS_URL for Redis):
the model access check in steady state, and one throttle decision.

    DATABASE_URL=... REDIS_URL=redis://127.0.0.1:6379/6 .venv/bin/python bench/ops_overhead.py
"""

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django

django.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from rest_framework.test import APIRequestFactory  # noqa: E402

from config.throttling import ScopeRateThrottle  # noqa: E402
from mlregistry.access import model_access_check  # noqa: E402
from mlregistry.models import ApiClientPolicy, RegisteredModel  # noqa: E402

N = int(os.environ.get("BENCH_N", "2000"))


def timed(fn, n=N) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def main() -> None:
    call_command("migrate", verbosity=0)
    user, _ = User.objects.get_or_create(username="bench-ops-client")
    model, _ = RegisteredModel.objects.get_or_create(name="bench-ops-model")
    policy, _ = ApiClientPolicy.objects.get_or_create(user=user)
    policy.allowed_models.set([model])

    model_access_check(user=user, model_name=model.name)  # warm the cache
    with CaptureQueriesContext(connection) as queries:
        p50, p99 = timed(lambda: model_access_check(user=user, model_name=model.name))
    print(f"model_access_check: p50 {p50:.1f} us, p99 {p99:.1f} us, {len(queries)} DB queries")

    factory = APIRequestFactory()
    request = factory.post("/api/v1/models/bench-ops-model/predict")
    request.user = user
    throttle = ScopeRateThrottle()
    p50, p99 = timed(lambda: throttle.allow_request(request, None))
    print(f"throttle decision:  p50 {p50:.1f} us, p99 {p99:.1f} us")
    print(f"cache backend: {django.conf.settings.CACHES['default']['BACKEND']}, n={N}")


if __name__ == "__main__":
    main()
