"""Liveness, readiness and the operators' deep check.

Readiness (`/health/ready`) answers one question for a load balancer: can this process serve
predictions? It is 503 only when a check says `down` (it cannot), and reports every other
dependency's and model's state in its body as `degraded` or `failed` without failing the whole:
taking a process that can still serve out of rotation turns a partial fault into an outage.
Checks are cheap (nothing is loaded). `/health/deep` adds the expensive checks (every
production model loaded and verified) for operators; it is open to the addresses and token
that may read /metrics, and to staff.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from django.core.cache import cache
from django.db import connection
from django.http import JsonResponse

from config.errors import RETRY_AFTER_SECONDS, error_body, get_only
from config.metrics import metrics_access_allowed

Check = Callable[[], tuple[str, Any]]

# Other apps add checks here: name -> callable returning ("ok" | "degraded" | "down", detail).
# "down" means this process cannot serve predictions (readiness answers 503).
READINESS_CHECKS: dict[str, Check] = {}
# Expensive checks for /health/deep, run instead of the readiness check of the same name.
DEEP_CHECKS: dict[str, Check] = {}


def _check_database() -> tuple[str, Any]:
    # Degraded, not down: predictions keep answering from the routing memo and the models
    # loaded in this process; the models check says when nothing is left to serve from.
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return "ok", connection.vendor


def _check_cache() -> tuple[str, Any]:
    key = f"health:{uuid.uuid4().hex}"
    cache.set(key, "1", 5)
    ok = cache.get(key) == "1"
    cache.delete(key)
    # Predictions keep answering without the cache, so it is degraded, never down.
    return ("ok", None) if ok else ("degraded", "cache did not return what was written")


READINESS_CHECKS["database"] = _check_database
READINESS_CHECKS["cache"] = _check_cache


def _run(checks: dict[str, Check]) -> JsonResponse:
    results: dict[str, Any] = {}
    overall = "ok"
    for name, check in checks.items():
        started = time.perf_counter()
        try:
            state, detail = check()
        except Exception as exc:
            # A check that cannot run says nothing about serving: degraded, with the reason.
            state, detail = "degraded", f"{type(exc).__name__}: {exc}"
        results[name] = {"status": state, "ms": round((time.perf_counter() - started) * 1000, 2)}
        if detail is not None:
            results[name]["detail"] = detail
        if state == "down":
            overall = "down"
        elif state == "degraded" and overall == "ok":
            overall = "degraded"
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if overall == "down" else {}
    return JsonResponse(
        {"status": overall, "checks": results},
        status=503 if overall == "down" else 200,
        headers=headers,
    )


@get_only
def live(request):
    return JsonResponse({"status": "ok"})


@get_only
def ready(request):
    """200 when this process can serve predictions (status "ok" or "degraded"), 503 ("down")
    when it cannot; each check's status, time (ms) and detail in "checks"."""
    return _run(READINESS_CHECKS)


@get_only
def deep(request):
    """Readiness with the expensive checks (DEEP_CHECKS replace their namesakes); 503 when any
    check is down. Restricted like /metrics (or staff), since it loads models."""
    user = getattr(request, "user", None)
    if not (metrics_access_allowed(request) or (user is not None and user.is_staff)):
        return JsonResponse(
            error_body(
                "permission_denied",
                "The deep health check is open to METRICS_ALLOWED_IPS, a METRICS_TOKEN "
                "bearer token, or staff.",
                None,
                getattr(request, "request_id", None),
            ),
            status=403,
        )
    return _run({**READINESS_CHECKS, **DEEP_CHECKS})
