from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from knox.models import AuthToken

from config.errors import NotFoundError
from mlregistry.access import api_client_allowed_models, model_access_check
from mlregistry.models import ApiClientPolicy
from tests import factories

pytestmark = pytest.mark.django_db


def _policy(user, *models):
    policy = ApiClientPolicy.objects.create(user=user)
    policy.allowed_models.set(models)
    return policy


def test_a_client_without_policy_may_use_every_model(client_user, iris_model):
    model_access_check(user=client_user, model_name="iris")
    model_access_check(user=client_user, model_name="anything")


def test_a_restricted_client_gets_404_for_other_models(
    client_user, iris_model, django_capture_on_commit_callbacks
):
    other = factories.registered_model_create("wine")
    with django_capture_on_commit_callbacks(execute=True):
        _policy(client_user, iris_model)
    model_access_check(user=client_user, model_name="iris")
    with pytest.raises(NotFoundError) as caught:
        model_access_check(user=client_user, model_name=other.name)
    # The same words as for a model that does not exist: nothing leaks about the others.
    assert caught.value.message == "No registered model named 'wine'."


def test_steady_state_checks_do_not_query_the_database(client_user, iris_model):
    _policy(client_user, iris_model)
    model_access_check(user=client_user, model_name="iris")
    with CaptureQueriesContext(connection) as queries:
        for _ in range(20):
            model_access_check(user=client_user, model_name="iris")
    assert len(queries) == 0


def test_unrestricted_answers_are_cached_too(client_user):
    api_client_allowed_models(user=client_user)
    with CaptureQueriesContext(connection) as queries:
        assert api_client_allowed_models(user=client_user) is None
    assert len(queries) == 0


def test_editing_the_allowed_models_takes_effect_on_the_next_request(
    client_user, iris_model, django_capture_on_commit_callbacks
):
    wine = factories.registered_model_create("wine")
    with django_capture_on_commit_callbacks(execute=True):
        policy = _policy(client_user, iris_model)
    assert api_client_allowed_models(user=client_user) == {"iris"}
    with django_capture_on_commit_callbacks(execute=True):
        policy.allowed_models.add(wine)
    assert api_client_allowed_models(user=client_user) == {"iris", "wine"}
    with django_capture_on_commit_callbacks(execute=True):
        wine.client_policies.remove(policy)
    assert api_client_allowed_models(user=client_user) == {"iris"}
    with django_capture_on_commit_callbacks(execute=True):
        policy.delete()
    assert api_client_allowed_models(user=client_user) is None


def test_creating_a_policy_restricts_a_client_already_cached(
    client_user, iris_model, django_capture_on_commit_callbacks
):
    assert api_client_allowed_models(user=client_user) is None
    with django_capture_on_commit_callbacks(execute=True):
        _policy(client_user)
    assert api_client_allowed_models(user=client_user) == frozenset()


def test_renaming_or_deleting_a_listed_model_refreshes_the_names(
    client_user, iris_model, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        _policy(client_user, iris_model)
    assert api_client_allowed_models(user=client_user) == {"iris"}
    with django_capture_on_commit_callbacks(execute=True):
        iris_model.name = "iris-v2"
        iris_model.save()
    assert api_client_allowed_models(user=client_user) == {"iris-v2"}
    with django_capture_on_commit_callbacks(execute=True):
        iris_model.delete()
    assert api_client_allowed_models(user=client_user) == frozenset()


def test_anonymous_is_not_restricted_here(iris_model):
    from django.contrib.auth.models import AnonymousUser

    assert api_client_allowed_models(user=AnonymousUser()) is None


def test_policies_are_edited_in_the_admin(client, iris_model, client_user):
    admin_user = factories.user_create("root", staff=True)
    admin_user.is_superuser = True
    admin_user.save()
    client.force_login(admin_user)
    response = client.post(
        "/admin/mlregistry/apiclientpolicy/add/",
        {"user": client_user.pk, "allowed_models": [iris_model.pk], "note": "partner A"},
    )
    assert response.status_code == 302, response.content[:2000]
    assert api_client_allowed_models(user=client_user) == {"iris"}
    listing = client.get("/admin/mlregistry/apiclientpolicy/")
    assert b"partner A" in listing.content and b"iris" in listing.content


@pytest.fixture
def superuser_client(client):
    user = factories.user_create("root", staff=True)
    user.is_superuser = True
    user.save()
    client.force_login(user)
    return client


def test_tokens_are_listed_with_user_expiry_and_status(superuser_client, client_user):
    AuthToken.objects.create(user=client_user, expiry=timedelta(days=3))
    expired, _ = AuthToken.objects.create(user=client_user, expiry=timedelta(days=1))
    AuthToken.objects.filter(pk=expired.pk).update(expiry=timezone.now() - timedelta(days=1))
    page = superuser_client.get("/admin/knox/authtoken/").content.decode()
    assert client_user.username in page and "expired" in page and "active" in page
    assert "Revoke selected tokens" in page and "Delete selected" not in page
    only_expired = superuser_client.get("/admin/knox/authtoken/?status=expired")
    assert [t.pk for t in only_expired.context["cl"].result_list] == [expired.pk]
    only_active = superuser_client.get("/admin/knox/authtoken/?status=active")
    assert only_active.context["cl"].result_count == 1


def test_revoking_a_token_in_the_admin_locks_the_client_out(superuser_client, client_user):
    from rest_framework.test import APIClient

    instance, token = AuthToken.objects.create(user=client_user)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.get("/api/v1/models/").status_code == 200
    response = superuser_client.post(
        "/admin/knox/authtoken/",
        {"action": "revoke", "_selected_action": [instance.pk]},
        follow=True,
    )
    assert "Revoked 1 token(s)." in response.content.decode()
    assert api.get("/api/v1/models/").status_code == 401


def test_tokens_are_not_created_or_edited_in_the_admin(superuser_client, client_user):
    instance, _ = AuthToken.objects.create(user=client_user)
    assert superuser_client.get("/admin/knox/authtoken/add/").status_code == 403
    page = superuser_client.get(f"/admin/knox/authtoken/{instance.pk}/change/")
    assert page.status_code == 200 and b'name="expiry"' not in page.content


def test_a_token_created_with_an_expiry_stops_working_after_it(client_user, capsys):
    from rest_framework.test import APIClient

    call_command("create_api_token", client_user.username, "--expires-in-days", "2")
    token = capsys.readouterr().out.strip().splitlines()[-1]
    instance = AuthToken.objects.get(user=client_user)
    assert timedelta(days=1, hours=23) < instance.expiry - timezone.now() <= timedelta(days=2)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.get("/api/v1/models/").status_code == 200
    AuthToken.objects.filter(pk=instance.pk).update(expiry=timezone.now() - timedelta(seconds=1))
    assert api.get("/api/v1/models/").status_code == 401


def test_a_restricted_client_sees_only_its_models_in_the_registry_api(
    client_api, client_user, iris_model, django_capture_on_commit_callbacks
):
    factories.registered_model_create("wine")
    with django_capture_on_commit_callbacks(execute=True):
        _policy(client_user, iris_model)
    listing = client_api.get("/api/v1/models/").json()
    assert [m["name"] for m in listing["results"]] == ["iris"]
    assert client_api.get("/api/v1/models/iris/").status_code == 200
    hidden = client_api.get("/api/v1/models/wine/")
    missing = client_api.get("/api/v1/models/nope/")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["error"]["type"] == "not_found"
    assert client_api.get("/api/v1/models/wine/versions/").status_code == 404


def test_an_unrestricted_client_lists_every_model(client_api, iris_model):
    factories.registered_model_create("wine")
    listing = client_api.get("/api/v1/models/").json()
    assert [m["name"] for m in listing["results"]] == ["iris", "wine"]


def test_expired_tokens_are_deleted_and_live_ones_still_authenticate(client_user):
    from rest_framework.test import APIClient

    from mlregistry.access import api_tokens_prune_expired
    from predictions.auth import CachedTokenAuthentication, auth_cache_key
    from predictions.cache import cache_get

    other = factories.user_create("other")
    expiring, expiring_key = AuthToken.objects.create(user=other, expiry=timedelta(hours=1))
    # Authenticated on the predict path while valid, so its user is cached; then it expires.
    CachedTokenAuthentication().authenticate_credentials(expiring_key.encode())
    assert cache_get(auth_cache_key(expiring.digest)) is not None
    # (Created after that authentication: knox sweeps a user's expired tokens when it runs.)
    AuthToken.objects.create(user=other, expiry=timedelta(days=-3))
    live = [
        factories.token_create(client_user),
        AuthToken.objects.create(user=client_user, expiry=timedelta(days=1))[1],
    ]
    AuthToken.objects.filter(pk=expiring.pk).update(expiry=timezone.now() - timedelta(minutes=1))

    assert api_tokens_prune_expired(dry_run=True) == 2
    assert AuthToken.objects.count() == 4
    assert api_tokens_prune_expired(batch_size=1) == 2

    assert set(AuthToken.objects.values_list("user", flat=True)) == {client_user.pk}
    # The deletes went through the ORM: the token cache's post_delete receiver ran.
    assert cache_get(auth_cache_key(expiring.digest)) is None
    for token in live:
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        assert api.get("/api/v1/models/").status_code == 200
