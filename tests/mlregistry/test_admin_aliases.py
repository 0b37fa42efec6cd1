"""The admin's aliases: badges in the lists and on the model page, the "set alias" action with
its confirmation, and tags and lineage on the upload and version forms."""

import re

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from mlregistry import services
from mlregistry.models import AuditEvent, ModelAlias, ModelVersion
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, db):
    client.force_login(User.objects.create_superuser("boss", password="pw"))
    return client


@pytest.fixture
def iris_two(iris_model):
    return [factories.version_create(iris_model, c=c) for c in (1.0, 2.0)]


def test_aliases_show_as_badges_in_the_version_list_and_on_the_model_page(
    admin_client, iris_model, iris_two
):
    services.model_alias_set(model=iris_model, alias="champion", version=2, actor="t")
    listed = admin_client.get(reverse("admin:mlregistry_modelversion_changelist")).content.decode()
    assert '<span class="mlr-alias" title="alias">@champion</span>' in listed
    page = admin_client.get(
        reverse("admin:mlregistry_registeredmodel_change", args=[iris_model.pk])
    ).content.decode()
    assert "@champion → v2" in page
    version_page = admin_client.get(
        reverse("admin:mlregistry_modelversion_change", args=[iris_two[1].pk])
    ).content.decode()
    assert "@champion" in version_page and 'id="set-alias"' in version_page


def test_set_alias_action_confirms_where_it_points_now_then_moves_it(
    admin_client, iris_model, iris_two
):
    services.model_alias_set(model=iris_model, alias="champion", version=1, actor="t")
    response = admin_client.post(
        reverse("admin:mlregistry_modelversion_changelist"),
        {"action": "set_alias", "_selected_action": [iris_two[1].pk]},
    )
    url = reverse("admin:mlregistry_modelversion_alias", args=[iris_two[1].pk])
    assert response.status_code == 302 and response["Location"] == url
    form = admin_client.get(url).content.decode()
    assert "@champion</span> → v1" in form
    review = admin_client.post(url, {"alias": "champion", "comment": "better"})
    text = review.content.decode()
    assert "points to <strong>iris v1</strong> now" in text
    assert ModelAlias.objects.get().version.version == 1  # nothing moved before the confirm
    done = admin_client.post(
        url,
        {"alias": "champion", "comment": "better", "expected": "1", "confirm": "1"},
        follow=True,
    )
    assert "Alias champion of iris now points to v2 (before: v1)." in done.content.decode(), (
        re.findall(r"messagelist.{0,400}", done.content.decode(), re.S)
    )
    assert ModelAlias.objects.get().version.version == 2
    event = AuditEvent.objects.filter(verb="alias_set").order_by("id").last()
    assert event.actor_name == "boss" and event.changes["comment"] == [None, "better"]


def test_a_confirmation_overtaken_by_another_move_is_refused(admin_client, iris_model, iris_two):
    url = reverse("admin:mlregistry_modelversion_alias", args=[iris_two[1].pk])
    # Shown: no alias yet. Meanwhile someone points it at v1.
    services.model_alias_set(model=iris_model, alias="champion", version=1, actor="t")
    done = admin_client.post(
        url, {"alias": "champion", "expected": "", "confirm": "1"}, follow=True
    )
    assert "Not moved" in done.content.decode()
    assert ModelAlias.objects.get().version.version == 1


def test_reserved_or_malformed_alias_is_refused_on_the_form(admin_client, iris_two):
    url = reverse("admin:mlregistry_modelversion_alias", args=[iris_two[0].pk])
    bad = admin_client.post(url, {"alias": "Champion"})
    assert bad.status_code == 200 and bad.context["form"].errors
    reserved = admin_client.post(
        url, {"alias": "latest", "expected": "", "confirm": "1"}, follow=True
    )
    assert "Refused" in reserved.content.decode() and not ModelAlias.objects.exists()


def test_set_alias_needs_the_promote_permission(client, iris_two):
    user = factories.user_create("viewer", staff=True, perms=["view_modelversion"])
    client.force_login(user)
    url = reverse("admin:mlregistry_modelversion_alias", args=[iris_two[0].pk])
    assert client.get(url).status_code == 403


def test_action_with_several_versions_asks_for_one(admin_client, iris_two):
    response = admin_client.post(
        reverse("admin:mlregistry_modelversion_changelist"),
        {"action": "set_alias", "_selected_action": [v.pk for v in iris_two]},
        follow=True,
    )
    assert "exactly one version" in response.content.decode()


def test_upload_form_records_tags_and_lineage(admin_client, iris_model):
    url = reverse("admin:mlregistry_modelversion_upload")
    fields = {
        "model": iris_model.pk,
        "artifact_format": "skops",
        "tags": '{"validated": "true"}',
        "run_id": "run-42",
        "git_commit": "abcdef1",
        "source_url": "https://example.com/run/42",
        "training_dataset_uri": "s3://data/iris.csv",
        "training_dataset_sha256": "cd" * 32,
    }
    bad = admin_client.post(
        url,
        {
            **fields,
            "git_commit": "zz",
            "artifact": SimpleUploadedFile("m.skops", factories.iris_classifier_bytes()),
        },
    )
    assert bad.status_code == 200 and "git_commit" in bad.context["form"].errors
    preview = admin_client.post(
        url,
        {**fields, "artifact": SimpleUploadedFile("m.skops", factories.iris_classifier_bytes())},
    )
    token = preview.context["confirm_form"].initial["token"]
    admin_client.post(url, {"token": token, "confirm": "1"})
    version = ModelVersion.objects.get()
    assert version.tags == {"validated": "true"}
    assert (version.run_id, version.git_commit) == ("run-42", "abcdef1")
    assert version.training_dataset_uri == "s3://data/iris.csv"
    assert version.training_dataset_sha256 == "cd" * 32


def test_version_and_model_forms_check_tags(admin_client, iris_model, iris_two):
    url = reverse("admin:mlregistry_modelversion_change", args=[iris_two[0].pk])
    bad = admin_client.post(url, {"tags": '{"bad key": "v"}', "metrics": "{}", "metadata": "{}"})
    assert bad.status_code == 200 and "tags" in bad.context["adminform"].form.errors
    admin_client.post(url, {"tags": '{"ok": "yes"}', "metrics": "{}", "metadata": "{}"})
    assert ModelVersion.objects.get(pk=iris_two[0].pk).tags == {"ok": "yes"}
    model_url = reverse("admin:mlregistry_registeredmodel_change", args=[iris_model.pk])
    page = admin_client.get(model_url)
    form = page.context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k != "tags"}
    data.update({"tags": '{"team": "risk"}', "description": ""})
    inline = page.context["inline_admin_formsets"][0].formset
    data.update({f"{inline.prefix}-TOTAL_FORMS": "0", f"{inline.prefix}-INITIAL_FORMS": "0"})
    admin_client.post(model_url, data)
    iris_model.refresh_from_db()
    assert iris_model.tags == {"team": "risk"}


def test_archiving_or_deleting_in_the_admin_says_which_aliases_went(
    admin_client, iris_model, iris_two
):
    services.model_alias_set(model=iris_model, alias="champion", version=1, actor="t")
    services.model_alias_set(model=iris_model, alias="shadow", version=2, actor="t")
    archived = admin_client.post(
        reverse("admin:mlregistry_modelversion_transition", args=[iris_two[0].pk, "archived"]),
        {"comment": ""},
        follow=True,
    )
    assert "Aliases removed with the archived version: champion (was on v1)." in (
        archived.content.decode()
    )
    deleted = admin_client.post(
        reverse("admin:mlregistry_modelversion_delete", args=[iris_two[1].pk]),
        {"post": "yes"},
        follow=True,
    )
    assert "Aliases removed with iris v2: shadow." in deleted.content.decode()
    assert not ModelAlias.objects.exists()


def test_tags_restored_in_the_former_list_form_merge_as_keys(iris_model):
    from mlregistry.models import RegisteredModel

    RegisteredModel.objects.filter(pk=iris_model.pk).update(tags=["legacy"])
    updated = services.registered_model_update(
        model=RegisteredModel.objects.get(pk=iris_model.pk), actor="t", tags_changes={"a": "b"}
    )
    assert updated.tags == {"a": "b", "legacy": ""}
