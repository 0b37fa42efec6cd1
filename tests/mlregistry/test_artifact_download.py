"""GET /api/v1/models/{name}/versions/{v}/artifact: who may, ETag, ranges, a missing file."""

from __future__ import annotations

import hashlib

import pytest

from mlregistry.downloads import byte_range
from mlregistry.storage import get_artifact_storage
from tests import factories

pytestmark = [pytest.mark.django_db, pytest.mark.storage]
URL = "/api/v1/models/iris/versions/1/artifact"


@pytest.fixture
def stored(iris_model):
    version = factories.version_create(iris_model)
    return version, factories.iris_classifier_bytes()


def _body(response) -> bytes:
    return b"".join(response.streaming_content)


def test_staff_downloads_the_exact_bytes_with_the_sha256_as_etag(staff_api, stored):
    version, data = stored
    response = staff_api.get(URL)
    assert response.status_code == 200
    assert _body(response) == data
    assert response["ETag"] == f'"{version.artifact_sha256}"'
    assert hashlib.sha256(data).hexdigest() == version.artifact_sha256
    assert response["Content-Length"] == str(len(data))
    assert response["Accept-Ranges"] == "bytes"
    assert "iris-v1.skops" in response["Content-Disposition"]


def test_a_client_needs_the_download_permission(client_api, client_user, stored):
    assert client_api.get(URL).status_code == 403
    allowed = factories.user_create("reader", perms=["download_modelversion"])
    from rest_framework.test import APIClient

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.token_create(allowed)}")
    assert api.get(URL).status_code == 200
    assert APIClient().get(URL).status_code == 401


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [("bytes=0-9", 0, 9), ("bytes=100-", 100, None), ("bytes=-50", -50, None)],
)
def test_one_range_is_served_as_206(staff_api, stored, header, first, last):
    _, data = stored
    response = staff_api.get(URL, HTTP_RANGE=header)
    assert response.status_code == 206
    expected = data[first : (last + 1 if last is not None else None)]
    assert _body(response) == expected
    start = first if first >= 0 else len(data) + first
    assert response["Content-Range"] == f"bytes {start}-{start + len(expected) - 1}/{len(data)}"
    assert response["Content-Length"] == str(len(expected))


def test_a_stale_if_range_or_several_ranges_get_the_whole_file(staff_api, stored):
    _, data = stored
    stale = staff_api.get(URL, HTTP_RANGE="bytes=0-9", HTTP_IF_RANGE='"' + "0" * 64 + '"')
    assert stale.status_code == 200 and _body(stale) == data
    several = staff_api.get(URL, HTTP_RANGE="bytes=0-1,5-6")
    assert several.status_code == 200 and _body(several) == data


def test_a_range_past_the_end_is_416_in_the_error_shape(staff_api, stored):
    _, data = stored
    response = staff_api.get(URL, HTTP_RANGE=f"bytes={len(data)}-")
    assert response.status_code == 416
    assert response["Content-Range"] == f"bytes */{len(data)}"
    assert response.json()["error"]["type"] == "range_not_satisfiable"


def test_if_none_match_with_the_etag_is_304(staff_api, stored):
    version, _ = stored
    response = staff_api.get(URL, HTTP_IF_NONE_MATCH=f'"{version.artifact_sha256}"')
    assert response.status_code == 304
    assert response["ETag"] == f'"{version.artifact_sha256}"'


def test_octet_stream_accept_is_served_and_errors_stay_json(staff_api, stored):
    assert staff_api.get(URL, HTTP_ACCEPT="application/octet-stream").status_code == 200
    missing = staff_api.get(
        "/api/v1/models/iris/versions/9/artifact", HTTP_ACCEPT="application/octet-stream"
    )
    assert missing.status_code == 404
    assert b'"not_found"' in missing.content


def test_a_missing_file_is_503_never_500(staff_api, stored):
    version, _ = stored
    get_artifact_storage().delete(version.artifact.name)
    response = staff_api.get(URL)
    assert response.status_code == 503
    assert response["Retry-After"]
    assert response.json()["error"]["type"] == "artifact_missing"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-0", (0, 0)),
        ("bytes=5-1000", (5, 99)),
        ("bytes=-1000", (0, 99)),
        ("bytes=-0", False),
        ("bytes=100-", False),
        ("bytes=9-3", None),
        ("bytes=-", None),
        ("items=0-1", None),
        ("bytes=0-1,3-4", None),
    ],
)
def test_byte_range_parsing(header, expected):
    assert byte_range(header, 100) == expected
