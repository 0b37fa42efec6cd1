"""The commands a newcomer types: staff tokens, the demo bootstrap and getting back in."""

import io

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from rest_framework.test import APIClient

from tests import factories

pytestmark = pytest.mark.django_db


def _token(*args: str) -> str:
    out = io.StringIO()
    call_command("create_api_token", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue().split()[-1]


def _api(token: str) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return api


def test_a_staff_token_may_upload_promote_and_roll_back():
    staff = _api(_token("alice", "--staff"))
    assert staff.post("/api/v1/models/", {"name": "iris"}, format="json").status_code == 201
    for c in (1.0, 2.0):
        artifact = io.BytesIO(factories.iris_classifier_bytes(c))
        artifact.name = "model.skops"
        answer = staff.post("/api/v1/models/iris/versions/", {"artifact": artifact})
        assert answer.status_code == 201, answer.json()
    for v in (1, 2):
        answer = staff.post(
            f"/api/v1/models/iris/versions/{v}/transition", {"stage": "production"}, format="json"
        )
        assert answer.status_code == 200, answer.json()
    assert staff.post("/api/v1/models/iris/rollback", {}, format="json").status_code == 200
    alice = User.objects.get(username="alice")
    assert alice.is_staff and not alice.is_superuser and not alice.has_usable_password()
    # Deleting and pickle uploads stay with people a superuser chooses.
    assert not alice.has_perm("mlregistry.delete_modelversion")
    assert not alice.has_perm("mlregistry.upload_pickle")


def test_staff_promotes_an_existing_client_and_a_plain_token_stays_plain():
    plain = _api(_token("bob"))
    assert plain.post("/api/v1/models/", {"name": "x"}, format="json").status_code == 403
    err = io.StringIO()
    call_command("create_api_token", "bob", "--staff", stdout=io.StringIO(), stderr=err)
    assert "'bob' is staff" in err.getvalue()
    assert plain.post("/api/v1/models/", {"name": "x"}, format="json").status_code == 201


def test_bootstrap_resets_the_admin_password_from_the_environment(monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "first-pass-1")
    call_command("bootstrap_demo", stdout=io.StringIO())
    out = io.StringIO()
    call_command("bootstrap_demo", stdout=out)
    assert "ADMIN_PASSWORD=(unchanged" not in out.getvalue()
    assert "ADMIN_PASSWORD=(reset from DJANGO_SUPERUSER_PASSWORD)" in out.getvalue()
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "second-pass-2")
    call_command("bootstrap_demo", stdout=io.StringIO())
    assert User.objects.get(username="admin").check_password("second-pass-2")
    monkeypatch.delenv("DJANGO_SUPERUSER_PASSWORD")
    out = io.StringIO()
    call_command("bootstrap_demo", stdout=out)
    assert "ADMIN_PASSWORD=(unchanged; the user already existed)" in out.getvalue()
    assert User.objects.get(username="admin").check_password("second-pass-2")
