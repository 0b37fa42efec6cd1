"""The admin's actions go through the same services as the API."""

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from mlregistry.models import ModelVersion, Stage, StageTransition
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, db):
    user = User.objects.create_superuser("boss", password="pw")
    client.force_login(user)
    return client


def _action(client, action: str, ids: list[int]):
    return client.post(
        reverse("admin:mlregistry_modelversion_changelist"),
        {"action": action, "_selected_action": ids},
        follow=True,
    )


def test_changelists_and_change_pages_render(admin_client, iris_model):
    version = factories.version_create(iris_model, metrics={"accuracy": 0.9})
    assert (
        admin_client.get(reverse("admin:mlregistry_registeredmodel_changelist")).status_code == 200
    )
    page = admin_client.get(reverse("admin:mlregistry_modelversion_changelist") + "?q=iris")
    assert page.status_code == 200 and b"accuracy=0.9" in page.content
    assert (
        admin_client.get(
            reverse("admin:mlregistry_modelversion_change", args=[version.pk])
        ).status_code
        == 200
    )
    assert (
        admin_client.get(
            reverse("admin:mlregistry_registeredmodel_change", args=[iris_model.pk])
        ).status_code
        == 200
    )


def test_promote_action_writes_an_audited_transition(admin_client, iris_model):
    version = factories.version_create(iris_model)
    response = _action(admin_client, "promote_to_production", [version.pk])
    assert b"is now in production" in response.content
    version.refresh_from_db()
    assert version.stage == Stage.PRODUCTION
    assert StageTransition.objects.get().actor_name == "boss"


def test_promoting_two_versions_of_one_model_is_refused(admin_client, iris_model):
    v1 = factories.version_create(iris_model, c=1.0)
    v2 = factories.version_create(iris_model, c=2.0)
    response = _action(admin_client, "promote_to_production", [v1.pk, v2.pk])
    assert b"at most one version per model" in response.content
    assert not ModelVersion.objects.filter(stage=Stage.PRODUCTION).exists()


def test_staging_archive_and_rollback_actions(admin_client, iris_model):
    v1 = factories.version_create(iris_model, c=1.0)
    v2 = factories.version_create(iris_model, c=2.0)
    _action(admin_client, "promote_to_staging", [v2.pk])
    _action(admin_client, "promote_to_production", [v1.pk])
    _action(admin_client, "promote_to_production", [v2.pk])
    response = admin_client.post(
        reverse("admin:mlregistry_registeredmodel_changelist"),
        {"action": "rollback_production", "_selected_action": [iris_model.pk]},
        follow=True,
    )
    assert b"is back in production" in response.content
    v1.refresh_from_db()
    assert v1.stage == Stage.PRODUCTION
    _action(admin_client, "archive", [v1.pk])
    v1.refresh_from_db()
    assert v1.stage == Stage.ARCHIVED


def test_refused_transition_is_reported_not_raised(admin_client, iris_model):
    version = factories.version_create(iris_model)
    _action(admin_client, "archive", [version.pk])
    response = _action(admin_client, "archive", [version.pk])
    assert b"already in stage" in response.content


def test_actions_need_the_promote_permission(client, iris_model):
    viewer = factories.user_create(
        "viewer", staff=True, perms=["view_modelversion", "change_modelversion"]
    )
    client.force_login(viewer)
    version = factories.version_create(iris_model)
    _action(client, "promote_to_production", [version.pk])
    version.refresh_from_db()
    assert version.stage == Stage.NONE


def test_upload_form_registers_through_the_service(admin_client, iris_model):
    assert admin_client.get(reverse("admin:mlregistry_modelversion_add")).status_code == 302
    response = admin_client.post(
        reverse("admin:mlregistry_modelversion_upload"),
        {
            "model": iris_model.pk,
            "artifact": SimpleUploadedFile("m.skops", factories.iris_classifier_bytes()),
            "artifact_format": "skops",
            "metrics": '{"accuracy": 0.97}',
        },
        follow=True,
    )
    assert response.status_code == 200
    version = ModelVersion.objects.get()
    assert version.created_by.username == "boss" and version.metrics == {"accuracy": 0.97}


def test_upload_form_shows_refusals(admin_client, iris_model):
    response = admin_client.post(
        reverse("admin:mlregistry_modelversion_upload"),
        {
            "model": iris_model.pk,
            "artifact": SimpleUploadedFile("m.skops", b"junk"),
            "artifact_format": "skops",
        },
    )
    assert response.status_code == 200
    assert b"Not a readable skops file" in response.content
    assert not ModelVersion.objects.exists()


def test_stage_sha_and_creator_are_read_only(admin_client, iris_model):
    version = factories.version_create(iris_model)
    admin_client.post(
        reverse("admin:mlregistry_modelversion_change", args=[version.pk]),
        {
            "stage": "production",
            "artifact_sha256": "0" * 64,
            "metrics": "{}",
            "metadata": "{}",
            "transitions-TOTAL_FORMS": "0",
            "transitions-INITIAL_FORMS": "0",
        },
    )
    version.refresh_from_db()
    assert version.stage == Stage.NONE and version.artifact_sha256 != "0" * 64
