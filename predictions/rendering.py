"""orjson parser and renderer for the predict endpoints (several times faster than the
stdlib json module on the rows a batch carries)."""

from __future__ import annotations

import json
from typing import Any

import orjson
from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser
from rest_framework.renderers import BaseRenderer

from config.errors import PayloadTooLarge


class ORJSONParser(BaseParser):
    media_type = "application/json"

    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        # DRF reads the WSGI stream directly, past Django's DATA_UPLOAD_MAX_MEMORY_SIZE check.
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        size = -1 if limit is None else limit + 1
        raw = stream.read(size) if stream is not None else b""
        if limit is not None and len(raw) > limit:
            raise PayloadTooLarge(
                f"The request body is larger than {limit} bytes (DATA_UPLOAD_MAX_MEMORY_SIZE)."
            )
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
        # NaN and Infinity are not JSON, so orjson refuses them; parse them anyway so that
        # validation can name the field that holds one instead of answering "malformed JSON".
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ParseError(f"Malformed JSON: {exc}") from None


class ORJSONRenderer(BaseRenderer):
    media_type = "application/json"
    format = "json"
    charset = None

    def render(self, data, accepted_media_type=None, renderer_context=None) -> bytes:
        if data is None:
            return b""
        return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)
