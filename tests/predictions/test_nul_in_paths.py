"""A NUL character in a path parameter or a query parameter of any endpoint in the schema is a
404 or 400 with the error shape, never a 500 (PostgreSQL refuses strings holding NUL, so before
the check `POST /api/v1/predictions/%00/feedback` reached the database and answered 500)."""

from __future__ import annotations

import re

import pytest


@pytest.fixture
def schema_routes(staff_api):
    schema = staff_api.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    routes = []
    for path, item in schema["paths"].items():
        for method in ("get", "post", "put", "patch", "delete"):
            if method in item and "{" in path:
                routes.append((method, path))
    assert ("post", "/api/v1/predictions/{request_id}/feedback") in routes
    return routes


@pytest.mark.django_db
def test_nul_in_any_path_parameter_is_a_404(staff_api, iris_production, schema_routes):
    for method, path in schema_routes:
        for value in ("%00", "a%00b", "1%00"):
            url = re.sub(r"\{[^}]+\}", value, path)
            response = getattr(staff_api, method)(url, {"actual": 1}, format="json")
            assert response.status_code == 404, (method, url, response.content)
            assert response.json()["error"]["type"] == "not_found"
    assert iris_production.model.versions.count() == 1


@pytest.mark.django_db
def test_nul_in_a_query_parameter_is_a_400_naming_it(staff_api, iris_production):
    for url in ("/api/v1/models/?search=%00", "/api/v1/models/iris/versions/?st%00age=x"):
        response = staff_api.get(url)
        assert response.status_code == 400, response.content
        error = response.json()["error"]
        assert error["type"] == "validation_error"
        assert error["fields"]
