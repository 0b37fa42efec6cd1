"""Liveness and readiness. Readiness names each part it checked; 503 when a required one fails."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from django.core.cache import cache
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.http import require_GET

# Other apps add checks here: name -> callable returning ("ok" | "degraded" | "down", detail).
READINESS_CHECKS: dict[str, Callable[[], tuple[str, Any]]] = {}


def _check_database() -> tuple[str, Any]:
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
_REQUIRED = {"database"}


@require_GET
def live(request):
    return JsonResponse({"status": "ok"})


@require_GET
def ready(request):
    checks: dict[str, Any] = {}
    overall = "ok"
    for name, check in READINESS_CHECKS.items():
        started = time.perf_counter()
        try:
            state, detail = check()
        except Exception as exc:
            state, detail = (
                ("down" if name in _REQUIRED else "degraded"),
                f"{type(exc).__name__}: {exc}",
            )
        checks[name] = {"status": state, "ms": round((time.perf_counter() - started) * 1000, 2)}
        if detail is not None:
            checks[name]["detail"] = detail
        if state == "down":
            overall = "down"
        elif state == "degraded" and overall == "ok":
            overall = "degraded"
    return JsonResponse(
        {"status": overall, "checks": checks}, status=503 if overall == "down" else 200
    )
