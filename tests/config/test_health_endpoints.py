import pytest

from config import health

pytestmark = pytest.mark.django_db


def test_liveness_answers_without_checking_anything(client):
    response = client.get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readiness_names_each_check(client):
    body = client.get("/health/ready").json()
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["cache"]["status"] == "ok"


def test_a_failing_check_degrades_and_only_a_down_one_takes_it_down(client, monkeypatch):
    # Faults injected on purpose: checks that fail, registered the way other apps register.
    def broken():
        raise RuntimeError("boom")

    monkeypatch.setitem(health.READINESS_CHECKS, "optional-part", broken)
    response = client.get("/health/ready")
    assert response.status_code == 200 and response.json()["status"] == "degraded"
    assert "RuntimeError: boom" in response.json()["checks"]["optional-part"]["detail"]

    monkeypatch.setitem(health.READINESS_CHECKS, "database", broken)
    response = client.get("/health/ready")
    assert response.status_code == 200 and response.json()["status"] == "degraded"

    monkeypatch.setitem(health.READINESS_CHECKS, "serving", lambda: ("down", "cannot serve"))
    response = client.get("/health/ready")
    assert response.status_code == 503 and response.json()["status"] == "down"
    assert response["Retry-After"]


def test_readiness_is_get_only(client):
    assert client.post("/health/ready").status_code == 405


@pytest.mark.django_db
def test_another_method_on_the_plain_views_is_a_json_405_with_allow(client):
    """Health, readiness, the V2 health routes, metrics and the landing page are plain Django
    views: Django's require_GET answered an empty text/html 405."""
    for path in (
        "/health",
        "/health/ready",
        "/v2/health/live",
        "/v2/health/ready",
        "/metrics",
        "/",
    ):
        answer = client.post(path)
        assert answer.status_code == 405, path
        assert answer["Allow"] == "GET, HEAD"
        assert answer.json()["error"]["type"] == "method_not_allowed", path
        assert answer["X-Request-ID"]
