"""One log line per HTTP request: method, path, status, latency, caller and request id."""

from __future__ import annotations

import logging
import time

from config.throttling import client_address

logger = logging.getLogger("mlregistry.requests")

# Probes, scrapes and static assets are frequent and dull; at INFO they would drown the rest.
_QUIET_PATHS = ("/health", "/metrics", "/static/")


def _caller(request) -> str:
    # DRF copies the user it authenticated (e.g. from a bearer token) onto the Django request.
    user = getattr(request, "user", None)
    try:
        if user is not None and user.is_authenticated:
            return user.get_username()
    except Exception:  # a session user the database could not load (an outage): still log
        return "unknown"
    return "anonymous"


class RequestLogMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        status = 500
        try:
            response = self.get_response(request)
            status = response.status_code
            return response
        finally:
            level = logging.DEBUG if request.path.startswith(_QUIET_PATHS) else logging.INFO
            if status >= 500:
                level = logging.ERROR
            if logger.isEnabledFor(level):
                self._log(request, level, status, started)

    @staticmethod
    def _log(request, level: int, status: int, started: float) -> None:
        """The log line; its fields are built only when the line will be written."""
        latency_ms = round((time.perf_counter() - started) * 1000, 2)
        fields = {
            "method": request.method,
            "path": request.path,
            "status": status,
            "latency_ms": latency_ms,
            "user": _caller(request),
            "client": client_address(request),
        }
        logger.log(
            level,
            "%s %s %s %.1fms user=%s client=%s",
            fields["method"],
            fields["path"],
            status,
            latency_ms,
            fields["user"],
            fields["client"],
            extra=fields,
        )
