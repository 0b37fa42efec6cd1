"""Admin deletes (the delete page and the bulk action, for models and versions) go through the
registry's services: the same refusals as the API, the same cache invalidation, and a model
whose versions were promoted (stage transitions exist) can be deleted."""

import pytest
from django.contrib.auth.models import User
from django.contrib.messages import get_messages
from django.urls import reverse

from mlregistry.models import ModelVersion, RegisteredModel, StageTransition
from predictions.models import PredictionLog
from predictions.services import prediction_log_flush
from tests import factories
from tests.predictions.conftest import IRIS_ROW, iris_version, promote

pytestmark = pytest.mark.django_db


@pytest.fixture
def boss(client, db):
    client.force_login(User.objects.create_superuser("boss", password="pw"))
    return client


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def _predict(api, path="/api/v1/models/iris/predict"):
    return api.post(path, {"features": IRIS_ROW}, format="json")


def _archive_production(version):
    promote(version, stage="archived")


def test_superuser_deletes_a_model_whose_versions_were_promoted(
    boss, client_api, iris_production, django_capture_on_commit_callbacks
):
    model = iris_production.model
    staged = iris_version(model, c=2.0)
    promote(staged)  # v1 archived, v2 production: stage transitions exist
    assert _predict(client_api).status_code == 200
    prediction_log_flush()
    assert PredictionLog.objects.exists()
    _archive_production(ModelVersion.objects.get(pk=staged.pk))
    url = reverse("admin:mlregistry_registeredmodel_delete", args=[model.pk])
    page = boss.get(url)
    assert page.status_code == 200
    assert not page.context["perms_lacking"], page.context["perms_lacking"]
    with django_capture_on_commit_callbacks(execute=True):
        response = boss.post(url, {"post": "yes"}, follow=True)
    assert response.status_code == 200
    assert not RegisteredModel.objects.filter(pk=model.pk).exists()
    assert not StageTransition.objects.exists() and not PredictionLog.objects.exists()
    assert _predict(client_api).status_code == 404
    assert _predict(client_api, f"/api/v1/predict/{model.pk}").status_code == 404


def test_deleting_a_model_with_a_production_version_is_refused_with_a_message(
    boss, iris_production
):
    model = iris_production.model
    url = reverse("admin:mlregistry_registeredmodel_delete", args=[model.pk])
    response = boss.post(url, {"post": "yes"}, follow=True)
    assert response.status_code == 200
    assert any("production version" in m for m in _messages(response)), _messages(response)
    assert RegisteredModel.objects.filter(pk=model.pk).exists()
    assert ModelVersion.objects.filter(pk=iris_production.pk).exists()


def test_bulk_delete_of_models_deletes_what_the_rules_allow(boss, iris_production):
    other = factories.registered_model_create("other")
    promote(iris_version(other, c=2.0))
    _archive_production(ModelVersion.objects.get(model=other))
    response = boss.post(
        reverse("admin:mlregistry_registeredmodel_changelist"),
        {
            "action": "delete_selected",
            "_selected_action": [iris_production.model.pk, other.pk],
            "post": "yes",
        },
        follow=True,
    )
    assert response.status_code == 200
    shown = _messages(response)
    assert any("iris: not deleted" in m and "production" in m for m in shown), shown
    assert any("Deleted 1 registered model" in m for m in shown), shown
    assert list(RegisteredModel.objects.values_list("name", flat=True)) == ["iris"]


def test_bulk_delete_confirmation_page_lists_the_history_going_with_it(boss, iris_production):
    response = boss.post(
        reverse("admin:mlregistry_registeredmodel_changelist"),
        {"action": "delete_selected", "_selected_action": [iris_production.model.pk]},
    )
    assert response.status_code == 200
    assert not response.context["perms_lacking"]
    assert b"stage transition" in response.content.lower()


def test_admin_version_delete_stops_serving_at_once(
    boss, client_api, iris_production, django_capture_on_commit_callbacks
):
    staged = iris_version(iris_production.model, c=2.0)
    promote(staged, stage="staging")
    pinned = f"/api/v1/models/iris/versions/{staged.version}/predict"
    assert _predict(client_api, pinned).status_code == 200  # routing entry cached
    url = reverse("admin:mlregistry_modelversion_delete", args=[staged.pk])
    assert not boss.get(url).context["perms_lacking"]
    with django_capture_on_commit_callbacks(execute=True):
        boss.post(url, {"post": "yes"}, follow=True)
    assert not ModelVersion.objects.filter(pk=staged.pk).exists()
    assert _predict(client_api, pinned).status_code == 404
    # Its number is never given again.
    assert iris_version(iris_production.model, c=3.0).version == staged.version + 1


def test_admin_refuses_to_delete_the_production_version(boss, iris_production):
    url = reverse("admin:mlregistry_modelversion_delete", args=[iris_production.pk])
    response = boss.post(url, {"post": "yes"}, follow=True)
    assert any("production version" in m for m in _messages(response)), _messages(response)
    assert ModelVersion.objects.filter(pk=iris_production.pk).exists()


def test_bulk_version_delete_goes_through_the_service(
    boss, client_api, iris_production, django_capture_on_commit_callbacks
):
    staged = iris_version(iris_production.model, c=2.0)
    pinned = f"/api/v1/models/iris/versions/{staged.version}/predict"
    assert _predict(client_api, pinned).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        response = boss.post(
            reverse("admin:mlregistry_modelversion_changelist"),
            {
                "action": "delete_selected",
                "_selected_action": [iris_production.pk, staged.pk],
                "post": "yes",
            },
            follow=True,
        )
    shown = _messages(response)
    assert any("not deleted" in m and "production" in m for m in shown), shown
    assert list(ModelVersion.objects.values_list("pk", flat=True)) == [iris_production.pk]
    assert _predict(client_api, pinned).status_code == 404
    assert _predict(client_api).status_code == 200


def test_renaming_a_model_in_the_admin_stops_serving_the_old_name(
    boss, client_api, iris_production, django_capture_on_commit_callbacks
):
    model = iris_production.model
    assert _predict(client_api).status_code == 200  # routing entry cached under "iris"
    url = reverse("admin:mlregistry_registeredmodel_change", args=[model.pk])
    form = boss.get(url).context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k != "tags"}
    data.update({"name": "iris-renamed", "tags": "[]", "description": ""})
    data.update({"versions-TOTAL_FORMS": "1", "versions-INITIAL_FORMS": "1"})
    data.update({"versions-MIN_NUM_FORMS": "0", "versions-MAX_NUM_FORMS": "1000"})
    data["versions-0-id"] = str(iris_production.pk)
    data["versions-0-model"] = str(model.pk)
    with django_capture_on_commit_callbacks(execute=True):
        response = boss.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert _predict(client_api).status_code == 404
    assert _predict(client_api, "/api/v1/models/iris-renamed/predict").status_code == 200


@pytest.mark.parametrize("object_id", ["abc", "1.5", "\u0661", "-1", "99999999999999999999999"])
def test_admin_pages_taking_an_id_answer_404_for_any_string(boss, iris_production, object_id):
    urls = [
        f"/admin/mlregistry/modelversion/{object_id}/stage/production/",
        f"/admin/mlregistry/registeredmodel/{object_id}/rollback/",
        f"/admin/mlregistry/modelversion/{object_id}/delete/",
        f"/admin/mlregistry/registeredmodel/{object_id}/delete/",
    ]
    for url in urls:
        response = boss.post(url, {"post": "yes"})
        assert response.status_code in (302, 404), (url, response.status_code)


@pytest.mark.parametrize(
    "splits",
    ["1:50, \u00b2:50", "\u0661:100", "+1:100", "99999999999:100", "9999999999:100", "1:50,2:1e2"],
)
def test_traffic_split_form_refuses_lookalike_numbers_without_a_500(boss, iris_production, splits):
    from predictions.models import TrafficSplit

    url = reverse("admin:predictions_modeltraffic_change", args=[iris_production.model.pk])
    response = boss.post(url, {"splits": splits}, follow=True)
    assert response.status_code == 200
    assert not TrafficSplit.objects.exists()
