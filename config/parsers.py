"""Request bodies and media types, the same for every endpoint.

One JSON parser for the whole API (DRF's DEFAULT_PARSER_CLASSES and the predict views' raw
body path both call parse_json): it bounds nesting depth (JSON_MAX_DEPTH) and refuses the NUL
character in strings and keys, which PostgreSQL cannot store in text or jsonb, with a 400 naming
the field. Media types are matched as HTTP says (RFC 9110 8.3.1): type and subtype are
case-insensitive, parameters are allowed, and the only charset a JSON body may declare is
UTF-8 (RFC 8259 8.1), so another one is a 415 naming it; an Accept that asks only for
another charset is a 406.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from django.conf import settings
from django.http import UnreadablePostError
from django.utils.http import parse_header_parameters
from rest_framework import parsers
from rest_framework.exceptions import NotAcceptable, ParseError, UnsupportedMediaType
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import BaseParser

from config.errors import PayloadTooLarge, RequestTimeout, ValidationFailed

SUPPORTED_CHARSET = "utf-8"
_UTF8_NAMES = frozenset(("utf-8", "utf8"))


def read_body(stream: Any) -> bytes:
    """The request body: 413 past DATA_UPLOAD_MAX_MEMORY_SIZE (read straight from the WSGI
    stream, so Django's own check of the declared length is not enough), 408 when the client
    stops sending it (the server's socket timeout, REQUEST_BODY_TIMEOUT) or breaks it off."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    size = -1 if limit is None else limit + 1
    try:
        raw = stream.read(size) if stream is not None else b""
    except (OSError, UnreadablePostError):
        raise RequestTimeout(
            "The request body did not arrive in time, or broke off (REQUEST_BODY_TIMEOUT)."
        ) from None
    if limit is not None and len(raw) > limit:
        raise PayloadTooLarge(
            f"The request body is larger than {limit} bytes (DATA_UPLOAD_MAX_MEMORY_SIZE)."
        )
    return raw


def parse_json(raw: bytes | str) -> Any:
    """JSON -> Python objects. 400 `parse_error` when it is not JSON; 400 `validation_error`
    naming the field when it nests deeper than JSON_MAX_DEPTH or holds a NUL character."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # NaN and Infinity are not JSON, so orjson refuses them; parse them anyway so that
        # validation can name the field that holds one instead of answering "malformed JSON".
        try:
            # Decoded strictly first: json.loads(bytes) decodes with "surrogatepass", which
            # lets a lone surrogate written as raw bytes (ED A0 80) through unescaped.
            value = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise ParseError(f"Malformed JSON: {exc}") from None
    json_check(value, raw)
    return value


_SURROGATE_WHY = (
    "must not contain a lone UTF-16 surrogate (\\ud800-\\udfff): it is not Unicode text."
)


def _text_problem(text: str, nul: bool, surrogate: bool) -> str | None:
    if nul and "\x00" in text:
        return "must not contain the NUL character (\\u0000)."
    if surrogate and not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return _SURROGATE_WHY
    return None


def json_check(value: Any, raw: bytes | str | None = None) -> None:
    """Refuses a parsed JSON value nested deeper than JSON_MAX_DEPTH, or holding in a string
    or key a NUL or a lone UTF-16 surrogate (RFC 8259 section 8.2 lets a parser accept an
    escaped one, as Python's does; no database, encoder or log can store it), with
    ValidationFailed naming the field. `raw`, the text it was parsed from, lets the common case
    skip the walk: a body with fewer brackets than the limit cannot nest too deep, and a NUL
    or a surrogate can only be written as an escape."""
    max_depth = settings.JSON_MAX_DEPTH
    if raw is not None:
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogatepass")
        nul = b"\\u0000" in raw
        surrogate = b"\\ud" in raw or b"\\uD" in raw
        if not (nul or surrogate) and raw.count(b"[") + raw.count(b"{") <= max_depth:
            return
    else:
        nul = surrogate = True
    text = nul or surrogate
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, dict):
            items: Any = node.items()
        elif isinstance(node, list):
            items = enumerate(node)
        else:
            if text and isinstance(node, str):
                why = _text_problem(node, nul, surrogate)
                if why:
                    _refuse(path, why)
            continue
        if depth > max_depth:
            _refuse(path, f"nests deeper than {max_depth} levels (JSON_MAX_DEPTH).")
        for key, item in items:
            if isinstance(key, str):
                why = _text_problem(key, nul, surrogate) if text else None
                if why:
                    _refuse(path or "(top level)", f"has a key that {why}")
                where = f"{path}.{key}" if path else key
            else:
                where = f"{path}[{key}]"
            if isinstance(item, dict | list) or (text and isinstance(item, str)):
                stack.append((item, depth + 1, where))


def _refuse(path: str, why: str) -> None:
    name = path or "(top level)"
    raise ValidationFailed(f"Invalid input: {name}: {why}", fields={name: [why]})


def _media_type(header: str) -> tuple[str, dict[str, str]]:
    try:
        full_type, params = parse_header_parameters(header)
    except ValueError:  # longer than Django's MAX_HEADER_LENGTH
        return "", {}
    return full_type.strip().lower(), params


def content_type_check(header: str | None, *, accepted: tuple[str, ...]) -> str:
    """The request's media type, lower-cased and without parameters, if it is one of
    `accepted` (a `+json` suffix counts as application/json) with no charset or UTF-8;
    otherwise 415 naming what is supported."""
    full_type, params = _media_type(header or "")
    base = "application/json" if full_type.endswith("+json") else full_type
    if base not in accepted:
        raise UnsupportedMediaType(
            header or "",
            detail=f"Unsupported media type {header or '(none)'!r}: send {' or '.join(accepted)}.",
        )
    charset = params.get("charset")
    if charset is not None and charset.strip().strip('"').lower() not in _UTF8_NAMES:
        raise UnsupportedMediaType(
            header,
            detail=f"Unsupported charset {charset!r}: the supported charset is "
            f"{SUPPORTED_CHARSET}.",
        )
    return base


class JSONParser(BaseParser):
    """The API's one JSON parser (orjson; several times faster than the stdlib on the rows a
    batch carries), with parse_json's depth and NUL rules."""

    media_type = "application/json"

    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        return parse_json(read_body(stream))


class HTTPContentNegotiation(DefaultContentNegotiation):
    """DRF's negotiation with media types compared as HTTP says: case-insensitive, parameters
    allowed, UTF-8 the only charset (415 for a body in another, 406 for an Accept that allows
    only another)."""

    def select_parser(self, request, parsers):
        header = request.content_type
        if header and len(header) > self.max_media_type_length:
            return None
        full_type = _media_type(header or "")[0]
        for parser in parsers:
            wanted = _media_type(parser.media_type)[0]
            if wanted == "application/json" and full_type.endswith("+json"):
                full_type = wanted
            if wanted in (full_type, "*/*"):
                if wanted == "application/json":
                    content_type_check(header, accepted=(wanted,))
                return parser
        return None

    def get_accept_list(self, request):
        accept = super().get_accept_list(request)
        kept = []
        refused = []
        for token in accept:
            full_type, params = _media_type(token)
            charset = params.get("charset")
            if charset is not None and charset.strip().strip('"').lower() not in _UTF8_NAMES:
                refused.append(charset)
                continue
            quality = params.get("q")
            kept.append(full_type + (f";q={quality}" if quality is not None else ""))
        if refused and not kept:
            raise NotAcceptable(
                f"Unsupported charset {refused[0]!r} in Accept: the supported charset is "
                f"{SUPPORTED_CHARSET}."
            )
        return kept


class MultiPartParser(parsers.MultiPartParser):
    """DRF's multipart parser, with the media type compared case-insensitively as RFC 9110
    §8.3.1 requires: negotiation already matches `Multipart/Form-Data`, but Django's parser
    then checks `startswith("multipart/")` and refused it as "Invalid Content-Type"."""

    def parse(self, stream: Any, media_type: Any = None, parser_context: Any = None) -> Any:
        if media_type:
            kind, separator, parameters = media_type.partition(";")
            media_type = kind.strip().lower() + separator + parameters
        return super().parse(stream, media_type, parser_context)
