"""/metrics: the Prometheus exposition, open only to allowed addresses or a bearer token.

Gunicorn runs several processes; with PROMETHEUS_MULTIPROC_DIR set (the compose file sets it)
every process writes its samples there and any one of them answers for all. Values that live
outside the web processes (the worker heartbeat) are read at scrape time.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import time

from django.conf import settings
from django.core.cache import cache
from django.http import HttpResponse, JsonResponse
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from config.errors import error_body, get_only
from config.throttling import client_address

logger = logging.getLogger(__name__)

WORKER_HEARTBEAT_CACHE_KEY = "mlregistry:worker_heartbeat"


def worker_heartbeat_record(*, now: float | None = None) -> float:
    """Stores "a worker ran a task at `now`"; the beat schedules it every minute."""
    stamp = time.time() if now is None else now
    cache.set(WORKER_HEARTBEAT_CACHE_KEY, stamp, timeout=None)
    return stamp


class ScrapeTimeCollector:
    """Gauges whose value is kept in the shared cache, read when Prometheus scrapes."""

    def collect(self):
        try:
            stamp = float(cache.get(WORKER_HEARTBEAT_CACHE_KEY) or 0)
        except Exception:
            logger.warning("worker heartbeat unreadable from the cache", exc_info=True)
            stamp = 0.0
        gauge = GaugeMetricFamily(
            "mlregistry_worker_heartbeat_timestamp_seconds",
            "Unix time of the last heartbeat task a Celery worker ran (0 = never seen).",
        )
        gauge.add_metric([], stamp)
        yield gauge


SCRAPE_TIME_REGISTRY = CollectorRegistry()
SCRAPE_TIME_REGISTRY.register(ScrapeTimeCollector())


def metrics_access_allowed(request) -> bool:
    """True for a matching METRICS_TOKEN bearer token or an address in METRICS_ALLOWED_IPS."""
    token = settings.METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    if (
        token
        and header.startswith("Bearer ")
        and hmac.compare_digest(header[len("Bearer ") :].encode(), token.encode())
    ):
        return True
    try:
        address = ipaddress.ip_address(client_address(request))
    except ValueError:
        return False
    for entry in settings.METRICS_ALLOWED_IPS:
        if entry == "*":
            return True
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            logger.warning("METRICS_ALLOWED_IPS entry %r is not an address or network", entry)
    return False


def exposition() -> bytes:
    """The text Prometheus scrapes: this process's (or all processes') metrics + scrape-time."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry) + generate_latest(SCRAPE_TIME_REGISTRY)


@get_only
def metrics_view(request):
    if not metrics_access_allowed(request):
        body = error_body(
            "permission_denied",
            "Metrics are open to METRICS_ALLOWED_IPS or a METRICS_TOKEN bearer token.",
            None,
            getattr(request, "request_id", None),
        )
        return JsonResponse(body, status=403)
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
