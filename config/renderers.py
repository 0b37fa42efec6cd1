"""Renderers that let a client ask for a file by its own media type.

DRF answers 406 to an `Accept` that no renderer of the view offers, even when the view streams
a file itself (a FileResponse never goes through a renderer). A download view lists these next
to JSON, so `Accept: application/octet-stream` (what the schema documents, and what generated
clients send) or `Accept: text/csv` is accepted; an error that reaches one of them is still the
JSON error body.
"""

from __future__ import annotations

import json
from typing import Any

from rest_framework.renderers import BaseRenderer


class BinaryRenderer(BaseRenderer):
    media_type = "application/octet-stream"
    format = "bin"
    charset = None

    def render(self, data: Any, accepted_media_type: Any = None, renderer_context: Any = None):
        return data if isinstance(data, bytes) else json.dumps(data).encode()


class CSVRenderer(BinaryRenderer):
    media_type = "text/csv"
    format = "csv"


class JSONErrorsMixin:
    """For a view that offers the renderers above: its errors are rendered as JSON and
    labelled so, whatever the client accepted (one of these would label the JSON error body
    application/octet-stream or text/csv)."""

    def handle_exception(self, exc: Exception) -> Any:
        from rest_framework.renderers import JSONRenderer

        self.request.accepted_renderer = JSONRenderer()  # type: ignore[attr-defined]
        self.request.accepted_media_type = "application/json"  # type: ignore[attr-defined]
        return super().handle_exception(exc)  # type: ignore[misc]
