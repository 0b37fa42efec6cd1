"""Prediction-log rows record the API client they were served to, and only that client (or a
user allowed to change the log) may record their outcome."""

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from predictions.models import PredictionLog
from predictions.services import prediction_feedback_record, prediction_log_flush
from tests import factories
from tests.predictions.conftest import IRIS_ROW, OTHER_ROW

pytestmark = pytest.mark.django_db


def _api(user) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.token_create(user)}")
    return api


@pytest.fixture
def other_user(db):
    return factories.user_create("other-client")


@pytest.fixture
def other_api(other_user) -> APIClient:
    return _api(other_user)


@pytest.fixture
def ml_team_api(db) -> APIClient:
    return _api(factories.user_create("ml-team", perms=["change_predictionlog"]))


def _serve(api, request_id=None, **body):
    headers = {"HTTP_X_REQUEST_ID": request_id} if request_id else {}
    response = api.post(
        "/api/v1/models/iris/predict", body or {"features": IRIS_ROW}, format="json", **headers
    )
    assert response.status_code == 200, response.json()
    prediction_log_flush()
    return response.json()


def _feedback(api, request_id, actual=0, **extra):
    return api.post(
        f"/api/v1/predictions/{request_id}/feedback",
        {"actual": actual, **extra},
        format="json",
        HTTP_X_REQUEST_ID="feedback-call",  # the error body echoes it: fixed, to compare bodies
    )


def test_served_row_records_the_authenticated_client(client_api, client_user, iris_production):
    body = _serve(client_api)
    assert PredictionLog.objects.get(request_id=body["request_id"]).served_to == client_user


def test_batch_rows_all_record_the_authenticated_client(client_api, client_user, iris_production):
    body = _serve(client_api, instances=[IRIS_ROW, OTHER_ROW, IRIS_ROW])
    rows = PredictionLog.objects.filter(request_id=body["request_id"])
    assert [r.served_to_id for r in rows.order_by("row_index")] == [client_user.pk] * 3


def test_served_client_records_its_outcome(client_api, iris_production):
    body = _serve(client_api)
    response = _feedback(client_api, body["request_id"], 0)
    assert response.status_code == 200
    assert response.json() == {"request_id": body["request_id"], "rows": 1}
    assert PredictionLog.objects.get(request_id=body["request_id"]).actual == 0


def test_another_client_gets_the_unknown_request_404_and_changes_nothing(
    client_api, other_api, staff_api, iris_production
):
    unknown = _feedback(other_api, "chosen-id", 0)
    _serve(client_api, request_id="chosen-id")
    response = _feedback(other_api, "chosen-id", 0)
    assert response.status_code == unknown.status_code == 404
    assert response.json() == unknown.json()  # learns nothing: the very same answer
    # Staff status and registry permissions are not the log permission.
    assert _feedback(staff_api, "chosen-id", 0).status_code == 404
    row = PredictionLog.objects.get(request_id="chosen-id")
    assert row.actual is None and row.feedback_at is None


def test_a_user_allowed_to_change_the_log_records_any_clients_outcome(
    client_api, ml_team_api, iris_production
):
    body = _serve(client_api)
    response = _feedback(ml_team_api, body["request_id"], 2)
    assert response.status_code == 200 and response.json()["rows"] == 1
    assert PredictionLog.objects.get(request_id=body["request_id"]).actual == 2


def test_a_named_job_records_outcomes_like_the_ml_team(client_api, iris_production):
    body = _serve(client_api)
    count = prediction_feedback_record(
        request_id=body["request_id"], actual=1, actor="job:outcome-import"
    )
    assert count == 1 and PredictionLog.objects.get(request_id=body["request_id"]).actual == 1


def test_rows_logged_before_served_to_accept_only_privileged_feedback(
    client_api, ml_team_api, iris_production
):
    body = _serve(client_api)
    # A row written before served_to existed has it NULL.
    PredictionLog.objects.filter(request_id=body["request_id"]).update(served_to=None)
    assert _feedback(client_api, body["request_id"], 0).status_code == 404
    assert PredictionLog.objects.get(request_id=body["request_id"]).actual is None
    assert _feedback(ml_team_api, body["request_id"], 0).status_code == 200
    assert PredictionLog.objects.get(request_id=body["request_id"]).actual == 0


def test_reusing_another_clients_request_id_neither_drops_nor_attaches_rows(
    client_api, client_user, other_api, other_user, ml_team_api, iris_production
):
    first = _serve(client_api, request_id="req-1")
    _serve(other_api, request_id="req-1", instances=[OTHER_ROW, OTHER_ROW])
    _serve(client_api, request_id="req-1")  # a retry of the same client is logged once
    rows = PredictionLog.objects.filter(request_id="req-1")
    assert sorted(rows.values_list("served_to_id", "row_index")) == sorted(
        [(client_user.pk, 0), (other_user.pk, 0), (other_user.pk, 1)]
    )
    mine = rows.get(served_to=client_user)
    assert mine.output == first["prediction"]

    # The ML team cannot tell whose outcome it would be recording: 409, nothing changed.
    conflict = _feedback(ml_team_api, "req-1", 0)
    assert conflict.status_code == 409 and conflict.json()["error"]["type"] == "conflict"
    assert not rows.filter(actual__isnull=False).exists()

    assert _feedback(other_api, "req-1", 1).json()["rows"] == 2
    assert _feedback(client_api, "req-1", 0, row_index=0).json()["rows"] == 1
    assert sorted(rows.values_list("served_to_id", "actual")) == sorted(
        [(client_user.pk, 0), (other_user.pk, 1), (other_user.pk, 1)]
    )


def test_deleting_a_user_keeps_its_rows_for_the_ml_team(client_api, client_user, iris_production):
    body = _serve(client_api)
    User.objects.filter(pk=client_user.pk).delete()
    row = PredictionLog.objects.get(request_id=body["request_id"])
    assert row.served_to is None


def test_admin_lists_and_filters_by_served_client(
    client_api, client_user, other_api, iris_production
):
    mine = _serve(client_api)["request_id"]
    theirs = _serve(other_api)["request_id"]
    admin = Client()
    admin.force_login(factories.staff_create("ops", extra_perms=["view_predictionlog"]))
    url = "/admin/predictions/predictionlog/"
    page = admin.get(url).content.decode()
    assert "column-served_to" in page and "other-client" in page
    filtered = admin.get(url, {"served_to__id__exact": client_user.pk}).content.decode()
    assert mine in filtered and theirs not in filtered
    row = PredictionLog.objects.get(request_id=mine)
    detail = admin.get(f"{url}{row.pk}/change/").content.decode()
    assert 'name="served_to"' not in detail  # read-only: shown, not editable
