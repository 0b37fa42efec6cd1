import pytest
from django.test import Client
from knox.models import AuthToken

from predictions.models import PredictionLog, TrafficSplit
from predictions.services import prediction_log_flush
from tests import factories
from tests.predictions.conftest import IRIS_ROW, iris_version, promote

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(db):
    client = Client()
    client.force_login(factories.staff_create("ops", extra_perms=["view_predictionlog"]))
    return client


def test_admin_sets_and_clears_a_split_through_the_service(
    admin_client, iris_production, iris_model
):
    promote(iris_version(iris_model, c=0.01), "staging")
    url = f"/admin/predictions/modeltraffic/{iris_model.pk}/change/"
    assert admin_client.get("/admin/predictions/modeltraffic/").status_code == 200
    assert admin_client.get(url).status_code == 200
    admin_client.post(url, {"splits": "1:80, v2:20"})
    assert sorted(TrafficSplit.objects.values_list("version__version", "weight")) == [
        (1, 80),
        (2, 20),
    ]
    assert "1:80, 2:20" in admin_client.get(url).content.decode()
    response = admin_client.post(url, {"splits": "1:80, 2:30"}, follow=True)
    assert "weights must sum to 100" in response.content.decode()
    assert admin_client.post(url, {"splits": "one:hundred"}).status_code == 200  # form error
    admin_client.post(url, {"splits": ""})
    assert TrafficSplit.objects.count() == 0


def test_admin_shows_online_accuracy_and_the_log(admin_client, client_api, iris_production):
    body = client_api.post("/api/v1/models/iris/predict", {"features": IRIS_ROW}, format="json")
    request_id = body.json()["request_id"]
    prediction_log_flush()
    client_api.post(f"/api/v1/predictions/{request_id}/feedback", {"actual": 0}, format="json")
    page = admin_client.get("/admin/predictions/versionquality/").content.decode()
    assert "accuracy 1.000" in page
    log = admin_client.get("/admin/predictions/predictionlog/").content.decode()
    assert request_id in log
    assert PredictionLog.objects.count() == 1


def test_client_without_promote_permission_cannot_edit_splits(iris_production, iris_model):
    user = factories.user_create("viewer", staff=True, perms=["view_registeredmodel"])
    client = Client()
    client.force_login(user)
    url = f"/admin/predictions/modeltraffic/{iris_model.pk}/change/"
    assert client.get(url).status_code == 200
    client.post(url, {"splits": "1:100"})
    assert TrafficSplit.objects.count() == 0


def test_revoked_token_is_refused_at_once_despite_the_token_cache(client_user, iris_production):
    from rest_framework.test import APIClient

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.token_create(client_user)}")
    url = "/api/v1/models/iris/predict"
    assert api.post(url, {"features": IRIS_ROW}, format="json").status_code == 200
    AuthToken.objects.filter(user=client_user).delete()
    assert api.post(url, {"features": IRIS_ROW}, format="json").status_code == 401


def test_deactivated_user_is_refused_at_once(client_api, client_user, iris_production):
    url = "/api/v1/models/iris/predict"
    assert client_api.post(url, {"features": IRIS_ROW}, format="json").status_code == 200
    client_user.is_active = False
    client_user.save()
    assert client_api.post(url, {"features": IRIS_ROW}, format="json").status_code == 401


def test_token_cache_can_be_switched_off(client_api, iris_production, settings):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    settings.PREDICTION_AUTH_CACHE_SECONDS = 0
    url = "/api/v1/models/iris/predict"
    client_api.post(url, {"features": IRIS_ROW}, format="json")
    with CaptureQueriesContext(connection) as queries:
        assert client_api.post(url, {"features": IRIS_ROW}, format="json").status_code == 200
    assert any("knox_authtoken" in q["sql"] for q in queries)


def test_bad_token_is_401(anon_api, iris_production):
    anon_api.credentials(HTTP_AUTHORIZATION="Bearer not-a-real-token")
    response = anon_api.post("/api/v1/models/iris/predict", {"features": IRIS_ROW}, format="json")
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("body", "content_type"),
    [("x=1", "text/plain"), ("{not json", "application/json")],
)
def test_bad_token_is_401_before_the_body_is_judged(
    anon_api, client_api, iris_production, body, content_type
):
    url = "/api/v1/models/iris/predict"
    # Warm: this process has routed iris, so it parses bodies to guess the result's cache key.
    assert client_api.post(url, {"features": IRIS_ROW}, format="json").status_code == 200
    anon_api.credentials(HTTP_AUTHORIZATION="Bearer not-a-real-token")
    response = anon_api.post(url, body, content_type=content_type)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_failed"


def test_an_unsupported_body_type_is_415_once_authenticated(client_api, iris_production):
    url = "/api/v1/models/iris/predict"
    assert client_api.post(url, {"features": IRIS_ROW}, format="json").status_code == 200
    response = client_api.post(url, "x=1", content_type="text/plain")
    assert response.status_code == 415
    assert response.json()["error"]["type"] == "unsupported_media_type"
