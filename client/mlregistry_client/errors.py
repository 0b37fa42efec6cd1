"""Typed exceptions for the server's error envelope:
``{"error": {"type", "message", "fields", "request_id"}}``."""

from __future__ import annotations

import contextlib
from typing import Any

import httpx


class RegistryError(Exception):
    """An error answer of the registry. ``status`` is the HTTP status; ``type``, ``message``,
    ``fields`` (field -> messages) and ``request_id`` are the server's own words."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        type: str = "error",
        fields: dict[str, list[str]] | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.fields = fields or {}
        self.request_id = request_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        details = "; ".join(f"{k}: {' '.join(v)}" for k, v in self.fields.items())
        tail = f" ({details})" if details and details not in self.message else ""
        return f"{self.status} {self.type}: {self.message}{tail} [request_id={self.request_id}]"


class ValidationError(RegistryError):
    """400: the request's fields are invalid (``fields`` names each and why)."""


class AuthenticationError(RegistryError):
    """401: no token, or a token that is unknown, revoked or expired."""


class PermissionDenied(RegistryError):
    """403: the token's user lacks the permission this operation needs."""


class NotFound(RegistryError):
    """404: no such model, version, request id (or one this client may not see)."""


class Conflict(RegistryError):
    """409: the object's state forbids the change (e.g. no production version to serve)."""


class PayloadTooLarge(RegistryError):
    """413: the body is over the server's limit (artifact size, batch rows)."""


class RangeNotSatisfiable(RegistryError):
    """416: an artifact range past its end."""


class RateLimited(RegistryError):
    """429 after the configured retries: ``retry_after`` says how long the server asked for."""


class Unavailable(RegistryError):
    """503 after the configured retries: a server dependency is down."""


class ChecksumMismatch(RegistryError):
    """Downloaded artifact bytes whose SHA-256 is not the registered one: never loaded."""


_BY_STATUS: dict[int, type[RegistryError]] = {
    400: ValidationError,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    416: RangeNotSatisfiable,
    429: RateLimited,
    503: Unavailable,
}


def retry_after_seconds(response: httpx.Response) -> float | None:
    """Retry-After in seconds (the delay form; an HTTP date is treated as absent)."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None


def error_from_response(response: httpx.Response) -> RegistryError:
    """The typed exception for an error answer (a non-JSON body keeps its first 200 chars)."""
    body: Any = None
    with contextlib.suppress(ValueError):
        body = response.json()
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"type": "http_error", "message": response.text[:200] or response.reason_phrase}
    cls = _BY_STATUS.get(response.status_code, RegistryError)
    return cls(
        str(error.get("message", "")),
        status=response.status_code,
        type=str(error.get("type", "error")),
        fields=error.get("fields") or {},
        request_id=error.get("request_id") or response.headers.get("X-Request-ID"),
        retry_after=retry_after_seconds(response),
    )
