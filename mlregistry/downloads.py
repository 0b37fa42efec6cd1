"""Artifact downloads: streamed from the storage API, with ETag = SHA-256 and single byte ranges.

Streamed on S3 too, not redirected to a presigned URL: the store's endpoint is often not
reachable by API clients (an internal MinIO), and the web process keeps the permission check.
Links handed out elsewhere (batch-job outputs) use mlregistry.storage.presigned_url.

Django's FileResponse streams but ignores Range. RFC 9110 lets a server answer a range request
with the whole representation, so only the case that matters for resuming a large download is
served partially: one `bytes=` range (first-last, first-, or -suffix). Several ranges, a
malformed header or a stale If-Range get the whole file (200); a range that starts past the end
is 416 with `Content-Range: bytes */size`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import IO

from django.http import FileResponse, HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils.http import parse_etags

from config.errors import error_body
from mlregistry.artifacts import ArtifactMissingError
from mlregistry.models import ArtifactFormat, ModelVersion
from mlregistry.storage import get_artifact_storage

CHUNK_SIZE = 256 * 1024
_RANGE = re.compile(r"^bytes=([0-9]{0,19})-([0-9]{0,19})$")  # ASCII, and within a 64-bit size
_SUFFIX = {ArtifactFormat.SKOPS: "skops", ArtifactFormat.JOBLIB: "pkl"}


def byte_range(header: str, size: int) -> tuple[int, int] | bool | None:
    """(first, last) inclusive for one satisfiable range; None to send the whole file; False
    when the range cannot be satisfied (416)."""
    match = _RANGE.match(header.strip().replace(" ", ""))
    if not match or not any(match.groups()):
        return None
    first, last = match.groups()
    if not first:  # the last N bytes
        length = int(last)
        if length == 0:
            return False
        return max(size - length, 0), size - 1
    start = int(first)
    if last and int(last) < start:
        return None  # syntactically invalid: ignored, as RFC 9110 says
    if start >= size:
        return False
    return start, min(int(last) if last else size - 1, size - 1)


def _chunks(file: IO[bytes], start: int, length: int) -> Iterator[bytes]:
    try:
        file.seek(start)
        while length > 0:
            chunk = file.read(min(CHUNK_SIZE, length))
            if not chunk:
                break
            length -= len(chunk)
            yield chunk
    finally:
        file.close()


def artifact_response(request: HttpRequest, version: ModelVersion) -> HttpResponse:
    """The version's stored bytes: 200 (whole), 206 (one range), 304 (If-None-Match matched)
    or 416; 503 when the file is missing from the store. Lengths are those of the stored file,
    never the registered size: a damaged file then fails the client's SHA-256 check at once
    instead of leaving it waiting for bytes that never come."""
    etag = f'"{version.artifact_sha256}"'
    common = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, no-transform"}
    if etag in parse_etags(request.headers.get("If-None-Match", "")):
        return _with(HttpResponse(status=304), common)
    try:
        file = get_artifact_storage().open(version.artifact.name, "rb")
    except FileNotFoundError:
        raise ArtifactMissingError(
            f"{version} could not be sent: its file is missing from the store."
        ) from None
    size = file.size
    wanted = None
    range_header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if range_header and (if_range is None or if_range.strip() == etag):
        wanted = byte_range(range_header, size)
    if wanted is False:
        file.close()
        body = error_body("range_not_satisfiable", f"The artifact has {size} bytes.")
        response = HttpResponse(json.dumps(body), content_type="application/json", status=416)
        response["Content-Range"] = f"bytes */{size}"
        return _with(response, common)

    suffix = _SUFFIX.get(version.artifact_format, "bin")
    filename = f"{version.model.name}-v{version.version}.{suffix}"
    if wanted is None:
        response = FileResponse(
            file, as_attachment=True, filename=filename, content_type="application/octet-stream"
        )
        response["Content-Length"] = str(size)
        return _with(response, common)
    start, end = wanted
    response = StreamingHttpResponse(
        _chunks(file, start, end - start + 1), status=206, content_type="application/octet-stream"
    )
    response["Content-Range"] = f"bytes {start}-{end}/{size}"
    response["Content-Length"] = str(end - start + 1)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return _with(response, common)


def _with(response: HttpResponse, headers: dict[str, str]) -> HttpResponse:
    for key, value in headers.items():
        response[key] = value
    return response
