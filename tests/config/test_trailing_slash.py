"""A route of the API answers with or without its trailing slash, keeping the method and the
body (config/slash.py), instead of Django's 301 that clients follow as a GET."""

from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.test import APIClient

from mlregistry.models import RegisteredModel
from tests import factories

pytestmark = pytest.mark.django_db


def test_a_post_without_the_slash_creates_and_is_not_redirected(staff_api):
    response = staff_api.post("/api/v1/models", {"name": "no-slash"}, format="json")

    assert response.status_code == 201, response.content
    assert RegisteredModel.objects.filter(name="no-slash").exists()
    assert response.wsgi_request.resolver_match.url_name == "model-list"


def test_a_get_with_an_extra_slash_answers_the_route_without_one(staff_api, iris_model):
    with_slash = staff_api.get(f"/api/v1/models/{iris_model.name}/aliases/")
    without = staff_api.get(f"/api/v1/models/{iris_model.name}/aliases")

    assert with_slash.status_code == without.status_code == 200
    assert with_slash.json() == without.json()


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/models/iris",  # detail: the route ends in a slash
        "/api/v1/models/iris/versions",
        "/api/v1/datasets",
        "/api/v1/audit-events",
        "/api/v1/webhooks",
        "/api/v1/models/iris/batch-jobs/",  # the route has none
        "/api/v1/models/iris/training-jobs/",
    ],
)
def test_both_spellings_of_a_route_give_the_same_answer(staff_api, iris_model, path):
    other = path[:-1] if path.endswith("/") else f"{path}/"

    first, second = staff_api.get(path), staff_api.get(other)

    assert first.status_code == second.status_code
    assert first.status_code != 404
    assert _without_request_id(first.json()) == _without_request_id(second.json())


def _without_request_id(body):
    if isinstance(body, dict) and "error" in body:
        return {**body, "error": {k: v for k, v in body["error"].items() if k != "request_id"}}
    return body


def test_pagination_links_name_the_routes_own_spelling(staff_api):
    for i in range(51):  # one more than PAGE_SIZE
        factories.registered_model_create(f"paged-{i}")

    body = staff_api.get("/api/v1/models").json()

    assert "/api/v1/models/?" in body["next"]


def test_a_path_neither_spelling_matches_is_the_json_404(staff_api):
    for path in ("/api/v1/nothing", "/api/v1/nothing/", "/api/v1/models/iris/nothing/"):
        response = staff_api.post(path, {}, format="json")

        assert response.status_code == 404
        assert response.json()["error"]["type"] == "not_found"
        assert path in response.json()["error"]["message"]


def test_the_routes_own_checks_still_apply(anon_api, client_api):
    assert anon_api.post("/api/v1/models", {"name": "x"}, format="json").status_code == 401
    assert client_api.post("/api/v1/models", {"name": "x"}, format="json").status_code == 403
    assert not RegisteredModel.objects.filter(name="x").exists()


def test_a_session_write_needs_its_csrf_token_under_either_spelling(staff_user):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(staff_user)

    for path in ("/api/v1/models", "/api/v1/models/"):
        response = browser.post(path, {"name": "csrf"}, content_type="application/json")

        assert response.status_code == 403, path
    assert not RegisteredModel.objects.filter(name="csrf").exists()


def test_the_schema_lists_one_spelling_per_route():
    schema = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    paths = schema.json()["paths"]

    assert "/api/v1/models/" in paths
    assert "/api/v1/models" not in paths
    assert "/api/v1/models/{name}/aliases/" not in paths
