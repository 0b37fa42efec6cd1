"""The predict views' content negotiation answers what DRF's would, without parsing the common
Accept headers."""

import pytest
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from predictions.rendering import JSONFirstContentNegotiation, ORJSONRenderer
from tests.predictions.conftest import IRIS_ROW

ACCEPTS = [
    None,
    "*/*",
    "application/json",
    "application/json; q=0.9",
    "application/*",
    "text/html",
    "text/html, application/json;q=0.5",
    "application/json; indent=4",
]


@pytest.mark.parametrize("accept", ACCEPTS)
@pytest.mark.parametrize("query", ["", "format=json", "format=api"])
@pytest.mark.parametrize(
    "renderers",
    [[ORJSONRenderer()], [JSONRenderer(), BrowsableAPIRenderer()]],
    ids=["orjson", "drf"],
)
def test_the_same_choice_as_drfs_negotiation(accept, query, renderers):
    headers = {"HTTP_ACCEPT": accept} if accept is not None else {}
    request = Request(APIRequestFactory().post(f"/x?{query}" if query else "/x", **headers))

    def choice(negotiation):
        try:
            renderer, media_type = negotiation.select_renderer(request, renderers)
        except Exception as exc:  # NotAcceptable, NotFound (unknown ?format=)
            return type(exc).__name__
        return type(renderer).__name__, media_type

    assert choice(JSONFirstContentNegotiation()) == choice(DefaultContentNegotiation())


@pytest.mark.django_db
def test_a_client_that_accepts_no_json_still_gets_406(client_api, iris_production):
    url = "/api/v1/models/iris/predict"
    refused = client_api.post(url, {"features": IRIS_ROW}, format="json", HTTP_ACCEPT="text/html")
    assert refused.status_code == 406
    ok = client_api.post(url, {"features": IRIS_ROW}, format="json", HTTP_ACCEPT="*/*")
    assert ok.status_code == 200 and ok["Content-Type"] == "application/json"
