"""The OpenAPI document's common parts: the error envelope, the headers every answer carries,
the statuses every operation can answer with, and the plain-Django endpoints (health, metrics).

drf-spectacular describes what a view declares; what the middleware, the exception handler,
the throttle and the body limit add to every answer is added here once, by a postprocessing
hook, so no view can forget it. Views declare only what is theirs (a 409 of a state change).
"""

from __future__ import annotations

import re
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse

_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

# The envelope config.errors.error_body builds, as one component.
ERROR_COMPONENTS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "description": "The one error shape of the whole API (config/errors.py).",
        "properties": {"error": {"$ref": "#/components/schemas/ErrorDetail"}},
        "required": ["error"],
    },
    "ErrorDetail": {
        "type": "object",
        "properties": {
            "type": {
                "type": "string",
                "description": "machine-readable kind, e.g. validation_error, not_found, "
                "conflict, throttled, unavailable",
            },
            "message": {"type": "string", "description": "what went wrong, for a person"},
            "fields": {
                "type": "object",
                "description": "offending field (dotted path, rows as instances[i].name) -> "
                "messages; absent when no field is to blame",
                "additionalProperties": {"type": "array", "items": {"type": "string"}},
            },
            "request_id": {
                "type": "string",
                "description": "the X-Request-ID of this answer, for support and feedback",
            },
        },
        "required": ["type", "message", "request_id"],
    },
}

HEADERS: dict[str, Any] = {
    "X-Request-ID": {
        "description": "This request's id: the caller's X-Request-ID when it is 1-128 plain "
        "characters ([A-Za-z0-9._:-]), otherwise one the server made.",
        "schema": {"type": "string"},
    },
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 0},
    },
}

_DESCRIPTIONS = {
    400: "Invalid input: `fields` names each offending field and why.",
    401: "No credentials, or a token that is unknown, revoked or expired.",
    403: "Authenticated, but this operation needs a permission the caller lacks.",
    404: "No such object (or one this client may not see), or no such page.",
    406: "No representation matches the Accept header (the API answers JSON).",
    409: "The object's current state forbids this change.",
    413: "The request body is larger than the server accepts.",
    415: "The body's media type is not one this operation accepts.",
    422: "The model could not answer these rows (`model_output_invalid`: an output that is not "
    "finite); `fields` names the rows. Nothing was cached or logged as served.",
    429: "Too many requests for this client and scope: wait Retry-After seconds.",
    503: "A dependency (database, cache, artifact store) is unavailable: retry after "
    "Retry-After seconds.",
}


def error_responses(*statuses: int) -> dict[int, OpenApiResponse]:
    """Error statuses one operation adds to the common ones, for `extend_schema(responses=...)`;
    the hook gives each the Error body and the common headers."""
    return {
        status: OpenApiResponse(OpenApiTypes.OBJECT, description=_DESCRIPTIONS[status])
        for status in statuses
    }


def _common_statuses(path: str, method: str, operation: dict[str, Any]) -> set[int]:
    """Statuses every operation of this kind can answer with, whatever its view says."""
    if not path.startswith("/api/"):
        return set()
    statuses = {406, 429, 503}
    if operation.get("security") != [{}] and operation.get("security") is not None:
        statuses.add(401)
    if method not in {"get", "head", "options"}:
        statuses.add(403)  # the registry's writes need staff and a permission; CSRF for sessions
    parameters = operation.get("parameters", [])
    if "{" in path or any(p.get("name") == "page" for p in parameters):
        statuses.add(404)
    if any(p.get("in") == "query" for p in parameters):
        statuses.add(400)
    if "requestBody" in operation:
        statuses |= {400, 413, 415}
    return statuses


def _error_response(status: int) -> dict[str, Any]:
    return {
        "description": _DESCRIPTIONS.get(status, "Error."),
        "content": {"application/json": {"schema": _ERROR_REF}},
    }


def _with_headers(path: str, status: str, response: dict[str, Any]) -> None:
    headers = response.setdefault("headers", {})
    headers["X-Request-ID"] = {"$ref": "#/components/headers/X-Request-ID"}
    if status in {"429", "503"} and path.startswith("/api/"):
        headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}


def _plain_text(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


_CHECK = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["ok", "degraded", "down"]},
        "ms": {"type": "number", "description": "how long the check took, milliseconds"},
        "detail": {"description": "what the check found (a name, a count, an error)"},
    },
    "required": ["status", "ms"],
}
_READINESS = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["ok", "degraded", "down"]},
        "checks": {
            "type": "object",
            "additionalProperties": {"$ref": "#/components/schemas/Check"},
        },
    },
    "required": ["status", "checks"],
}


def _operations_paths() -> dict[str, Any]:
    """config.health and config.metrics are plain Django views, which spectacular cannot see."""
    public = [{}]
    return {
        "/health": {
            "get": {
                "operationId": "health",
                "tags": ["operations"],
                "summary": "Liveness: the process answers",
                "security": public,
                "responses": {
                    "200": {
                        "description": "Alive.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"status": {"type": "string", "enum": ["ok"]}},
                                    "required": ["status"],
                                }
                            }
                        },
                    }
                },
            }
        },
        "/health/ready": {
            "get": {
                "operationId": "readiness",
                "tags": ["operations"],
                "summary": "Readiness: can this process serve predictions",
                "description": "Each dependency's state in `checks`; 503 only when a required "
                "one (the database) is down. A degraded cache still answers 200.",
                "security": public,
                "responses": {
                    "200": {
                        "description": "Ready (status ok or degraded).",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/Readiness"}
                            }
                        },
                    },
                    "503": {
                        "description": "Not ready: a required dependency is down.",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/Readiness"}
                            }
                        },
                    },
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["operations"],
                "summary": "Prometheus metrics (text exposition format)",
                "description": "Open to METRICS_ALLOWED_IPS, or with `Authorization: Bearer "
                "<METRICS_TOKEN>`; anyone else gets 403.",
                "security": public,
                "responses": {
                    "200": _plain_text("The Prometheus text exposition format, version 0.0.4."),
                    "403": _error_response(403),
                },
            }
        },
    }


def postprocess_schema(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    """drf-spectacular postprocessing hook (SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"])."""
    components = result.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.update(ERROR_COMPONENTS)
    schemas["Check"] = _CHECK
    schemas["Readiness"] = _READINESS
    components.setdefault("headers", {}).update(HEADERS)
    paths = result.setdefault("paths", {})
    paths.update(_operations_paths())
    for path, item in paths.items():
        for method, operation in item.items():
            if method not in _HTTP_METHODS:
                continue
            responses = operation.setdefault("responses", {})
            for status in sorted(_common_statuses(path, method, operation)):
                responses.setdefault(str(status), _error_response(status))
            for status, response in responses.items():
                if re.fullmatch(r"[45]\d\d", status) and path.startswith("/api/"):
                    # A view's own error statuses (error_responses) get the one Error body,
                    # keeping any examples they carry.
                    content = response.setdefault("content", {}).setdefault("application/json", {})
                    content["schema"] = _ERROR_REF
                _with_headers(path, status, response)
            operation["responses"] = dict(sorted(responses.items()))
    result["paths"] = dict(sorted(paths.items()))
    return result
