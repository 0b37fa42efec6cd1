"""The admin: actions, upload preview and confirmation, stage-change pages and rollback, all
through the same services as the API."""

import io
import re

import pytest
from django.contrib.auth.models import User
from django.core.files.storage import storages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from mlregistry import services
from mlregistry.admin import PENDING_PER_SESSION, PENDING_SESSION_KEY
from mlregistry.models import ModelVersion, Stage, StageTransition
from tests import factories
from tests.storage import store_write

pytestmark = [pytest.mark.django_db, pytest.mark.storage]


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
    assert page.status_code == 200
    assert b'accuracy=<span class="mlr-metric" title="0.9">0.9</span>' in page.content
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


def _confirm(client, version, stage: str, **data):
    """What a user does on the confirmation page the action opens."""
    url = reverse("admin:mlregistry_modelversion_transition", args=[version.pk, stage])
    page = client.get(url)
    expected = page.context["form"].initial["expected_production"]
    return client.post(
        url, {"expected_production": "" if expected is None else expected, **data}, follow=True
    )


def test_promote_action_writes_an_audited_transition(admin_client, iris_model):
    version = factories.version_create(iris_model)
    response = _action(admin_client, "promote_to_production", [version.pk])
    assert b"What will change" in response.content  # the action asks for a confirmation first
    response = _confirm(admin_client, version, Stage.PRODUCTION)
    assert b"is now in production" in response.content
    version.refresh_from_db()
    assert version.stage == Stage.PRODUCTION
    assert StageTransition.objects.get().actor_name == "boss"


def test_promoting_two_versions_of_one_model_is_refused(admin_client, iris_model):
    v1 = factories.version_create(iris_model, c=1.0)
    v2 = factories.version_create(iris_model, c=2.0)
    response = _action(admin_client, "promote_to_production", [v1.pk, v2.pk])
    assert b"exactly one version" in response.content
    assert not ModelVersion.objects.filter(stage=Stage.PRODUCTION).exists()


def test_staging_archive_and_rollback_actions(admin_client, iris_model):
    v1 = factories.version_create(iris_model, c=1.0)
    v2 = factories.version_create(iris_model, c=2.0)
    _confirm(admin_client, v2, Stage.STAGING)
    _confirm(admin_client, v1, Stage.PRODUCTION)
    _confirm(admin_client, v2, Stage.PRODUCTION)
    response = admin_client.post(
        reverse("admin:mlregistry_registeredmodel_changelist"),
        {"action": "rollback_production", "_selected_action": [iris_model.pk]},
        follow=True,
    )
    assert b"is back in production" in response.content
    v1.refresh_from_db()
    assert v1.stage == Stage.PRODUCTION
    _confirm(admin_client, v1, Stage.ARCHIVED)
    v1.refresh_from_db()
    assert v1.stage == Stage.ARCHIVED


def test_refused_transition_is_reported_not_raised(admin_client, iris_model):
    version = factories.version_create(iris_model)
    url = reverse("admin:mlregistry_modelversion_transition", args=[version.pk, "archived"])
    page = admin_client.get(url)  # the confirmation page, opened before someone else archives
    services.model_version_transition(version=version, stage=Stage.ARCHIVED, actor="tests")
    expected = page.context["form"].initial["expected_production"]
    response = admin_client.post(
        url, {"expected_production": "" if expected is None else expected}, follow=True
    )
    assert _messages(response) == ["iris v1 is in archived: archive is not offered from there."]


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
    assert not ModelVersion.objects.exists()  # previewed, not registered yet
    token = response.context["confirm_form"].initial["token"]
    admin_client.post(
        reverse("admin:mlregistry_modelversion_upload"), {"token": token, "confirm": "1"}
    )
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


# --- Upload preview, stage confirmation pages, one-click rollback ---

UPLOAD_URL = reverse("admin:mlregistry_modelversion_upload")


@pytest.fixture
def staff_client(client, staff_user):
    client.force_login(staff_user)
    return client


def _skops_file(c: float = 2.0, name: str = "iris.skops") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, factories.iris_classifier_bytes(c))


def _preview(staff_client, model, **fields):
    data = {"model": model.pk, "artifact": _skops_file(), "artifact_format": "skops", **fields}
    return staff_client.post(UPLOAD_URL, data)


def _messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


def _pending_token(staff_client) -> str:
    return next(iter(staff_client.session[PENDING_SESSION_KEY]))


def test_upload_preview_shows_inferred_schema_and_registers_nothing(staff_client, iris_model):
    response = _preview(staff_client, iris_model, metrics='{"accuracy": 0.97}')
    assert response.status_code == 200
    html = response.content.decode()
    for feature in ("sepal_length", "sepal_width", "petal_length", "petal_width"):
        assert f"<code>{feature}</code>" in html
    assert "(inferred from the model)" in html
    assert "0, 1, 2" in html  # classes
    assert "No reference sample" in html  # a detected problem worth a second look
    assert not ModelVersion.objects.exists()
    entry = staff_client.session[PENDING_SESSION_KEY][_pending_token(staff_client)]
    assert storages["artifacts"].exists(entry["name"])


def test_confirming_a_preview_registers_the_previewed_bytes_and_drops_the_parked_file(
    staff_client, iris_model
):
    _preview(staff_client, iris_model, metrics='{"accuracy": 0.97}')
    token = _pending_token(staff_client)
    parked = staff_client.session[PENDING_SESSION_KEY][token]["name"]
    response = staff_client.post(UPLOAD_URL, {"token": token, "confirm": "1"}, follow=True)
    version = ModelVersion.objects.get()
    assert response.redirect_chain[-1][0] == reverse(
        "admin:mlregistry_modelversion_change", args=[version.pk]
    )
    assert version.metrics == {"accuracy": 0.97}
    assert version.created_by.username == "staff"
    assert any("Registered iris v1" in m for m in _messages(response))
    assert not storages["artifacts"].exists(parked)
    assert staff_client.session[PENDING_SESSION_KEY] == {}


def test_a_preview_can_be_confirmed_only_once(staff_client, iris_model):
    _preview(staff_client, iris_model)
    token = _pending_token(staff_client)
    staff_client.post(UPLOAD_URL, {"token": token, "confirm": "1"})
    response = staff_client.post(UPLOAD_URL, {"token": token, "confirm": "1"}, follow=True)
    assert ModelVersion.objects.count() == 1
    assert any("no longer available" in m for m in _messages(response))


def test_confirm_refuses_a_parked_file_that_changed_since_the_preview(staff_client, iris_model):
    _preview(staff_client, iris_model)
    token = _pending_token(staff_client)
    parked = staff_client.session[PENDING_SESSION_KEY][token]["name"]
    # Fault injected on purpose: another file takes the previewed one's place in storage.
    store_write(parked, factories.iris_classifier_bytes(5.0))
    response = staff_client.post(UPLOAD_URL, {"token": token, "confirm": "1"}, follow=True)
    assert not ModelVersion.objects.exists()
    assert any("checksum mismatch" in m for m in _messages(response))
    assert not storages["artifacts"].exists(parked)


def test_cancel_drops_the_parked_file(staff_client, iris_model):
    _preview(staff_client, iris_model)
    token = _pending_token(staff_client)
    parked = staff_client.session[PENDING_SESSION_KEY][token]["name"]
    response = staff_client.post(UPLOAD_URL, {"token": token, "cancel": "1"}, follow=True)
    assert any("cancelled" in m for m in _messages(response))
    assert not storages["artifacts"].exists(parked)
    assert not ModelVersion.objects.exists()


def test_confirm_of_a_deleted_parked_file_asks_for_a_new_upload(staff_client, iris_model):
    _preview(staff_client, iris_model)
    token = _pending_token(staff_client)
    services.pending_upload_discard(name=staff_client.session[PENDING_SESSION_KEY][token]["name"])
    response = staff_client.post(UPLOAD_URL, {"token": token, "confirm": "1"}, follow=True)
    assert any("upload it again" in m for m in _messages(response))


def test_old_previews_beyond_the_per_session_limit_are_discarded(staff_client, iris_model):
    for _ in range(PENDING_PER_SESSION + 1):
        _preview(staff_client, iris_model)
    names = [e["name"] for e in staff_client.session[PENDING_SESSION_KEY].values()]
    assert len(names) == PENDING_PER_SESSION
    assert sum(1 for _ in storages["artifacts"].listdir("pending")[0]) == PENDING_PER_SESSION


def test_untrusted_types_are_refused_with_their_names(staff_client, iris_model):
    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    # A FunctionTransformer over a non-sklearn function carries a type skops does not trust.
    payload = sio.dumps(FunctionTransformer(func=io.BytesIO))
    response = staff_client.post(
        UPLOAD_URL,
        {
            "model": iris_model.pk,
            "artifact": SimpleUploadedFile("bad.skops", payload),
            "artifact_format": "skops",
        },
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert "Refused (artifact error)" in html
    assert "<code>_io.BytesIO</code>" in html
    assert "Nothing was registered" in html
    assert (
        not storages["artifacts"].exists("pending")
        or not storages["artifacts"].listdir("pending")[0]
    )


def test_a_schema_refusal_lists_the_offending_fields(staff_client, iris_model):
    response = _preview(staff_client, iris_model, input_schema='[{"name": "a"}]')
    html = response.content.decode()
    assert "Refused (schema error)" in html
    assert "expected 4 features, got 1" in html


def test_upload_page_labels_every_field_and_preselects_the_model(staff_client, iris_model):
    response = staff_client.get(UPLOAD_URL + f"?model={iris_model.pk}")
    html = response.content.decode()
    form = response.context["form"]
    for field in form:
        assert f'for="{field.auto_id}"' in html
    assert f'<option value="{iris_model.pk}" selected>' in html


def test_upload_needs_the_add_permission(client, iris_model):
    viewer = factories.user_create("viewer", staff=True, perms=["view_modelversion"])
    client.force_login(viewer)
    assert client.get(UPLOAD_URL).status_code == 403


def _transition_url(version, stage: str) -> str:
    return reverse("admin:mlregistry_modelversion_transition", args=[version.pk, stage])


def test_promotion_page_shows_what_will_be_archived(staff_client, iris_model):
    v1 = factories.version_create(iris_model, c=1.0)
    v2 = factories.version_create(iris_model, c=2.0)
    services.model_version_transition(version=v1, stage=Stage.PRODUCTION, actor="tests")
    html = staff_client.get(_transition_url(v2, Stage.PRODUCTION)).content.decode()
    assert 'id="will-archive"' in html and "iris v1" in html
    assert 'for="id_comment"' in html
    assert f'name="expected_production" value="{v1.pk}"' in html


def test_confirming_a_promotion_records_the_comment_in_the_timeline(staff_client, iris_model):
    v1 = factories.version_create(iris_model, c=1.0)
    v2 = factories.version_create(iris_model, c=2.0)
    services.model_version_transition(version=v1, stage=Stage.PRODUCTION, actor="tests")
    response = staff_client.post(
        _transition_url(v2, Stage.PRODUCTION),
        {"comment": "better recall", "expected_production": v1.pk},
        follow=True,
    )
    v1.refresh_from_db()
    v2.refresh_from_db()
    assert (v1.stage, v2.stage) == (Stage.ARCHIVED, Stage.PRODUCTION)
    html = response.content.decode()
    assert "iris v2 is now in production." in _messages(response)
    assert 'class="mlr-timeline"' in html and "better recall" in html


def test_keeping_the_replaced_version_in_staging(staff_client, iris_model):
    v1 = factories.version_create(iris_model, c=1.0)
    v2 = factories.version_create(iris_model, c=2.0)
    services.model_version_transition(version=v1, stage=Stage.PRODUCTION, actor="tests")
    staff_client.post(
        _transition_url(v2, Stage.PRODUCTION),
        {"expected_production": v1.pk, "keep_previous_in_staging": "on"},
    )
    v1.refresh_from_db()
    assert v1.stage == Stage.STAGING


def test_promotion_confirmed_on_a_stale_page_loses_the_race_and_changes_nothing(
    staff_client, iris_model
):
    v1 = factories.version_create(iris_model, c=1.0)
    v2 = factories.version_create(iris_model, c=2.0)
    v3 = factories.version_create(iris_model, c=3.0)
    services.model_version_transition(version=v1, stage=Stage.PRODUCTION, actor="tests")
    page = staff_client.get(_transition_url(v2, Stage.PRODUCTION))
    assert page.context["replaced"] == v1
    # Someone else promotes v3 while the page is open.
    services.model_version_transition(version=v3, stage=Stage.PRODUCTION, actor="other")
    response = staff_client.post(
        _transition_url(v2, Stage.PRODUCTION), {"expected_production": v1.pk}, follow=True
    )
    v2.refresh_from_db()
    assert v2.stage == Stage.NONE
    assert any("Race lost" in m and "v3" in m for m in _messages(response))


def test_archiving_the_production_version_warns_that_nothing_will_serve(staff_client, iris_model):
    v1 = factories.version_create(iris_model)
    services.model_version_transition(version=v1, stage=Stage.PRODUCTION, actor="tests")
    html = staff_client.get(_transition_url(v1, Stage.ARCHIVED)).content.decode()
    assert "has no production version" in html


def test_stage_pages_need_the_promote_permission(client, iris_model):
    v1 = factories.version_create(iris_model)
    user = factories.user_create("editor", staff=True, perms=["view_modelversion"])
    client.force_login(user)
    assert client.get(_transition_url(v1, Stage.STAGING)).status_code == 403


def test_unknown_stage_page_is_not_found(staff_client, iris_model):
    v1 = factories.version_create(iris_model)
    assert staff_client.get(_transition_url(v1, "none")).status_code == 404


def test_version_page_links_every_possible_stage_move_and_shows_the_schema(
    staff_client, iris_model
):
    v1 = factories.version_create(iris_model)
    html = staff_client.get(
        reverse("admin:mlregistry_modelversion_change", args=[v1.pk])
    ).content.decode()
    for stage in ("staging", "production", "archived"):
        assert f'href="{_transition_url(v1, stage)}"' in html
    assert "<code>petal_width</code>" in html
    assert "No stage changes yet." in html


def test_changelist_action_on_one_version_goes_to_the_confirmation_page(staff_client, iris_model):
    v1 = factories.version_create(iris_model)
    response = staff_client.post(
        reverse("admin:mlregistry_modelversion_changelist"),
        {"action": "promote_to_production", "_selected_action": [v1.pk]},
    )
    assert response.status_code == 302
    assert response["Location"] == _transition_url(v1, Stage.PRODUCTION)


def test_changelist_production_action_refuses_several_versions(staff_client, iris_model):
    v1 = factories.version_create(iris_model, c=1.0)
    v2 = factories.version_create(iris_model, c=2.0)
    response = staff_client.post(
        reverse("admin:mlregistry_modelversion_changelist"),
        {"action": "promote_to_production", "_selected_action": [v1.pk, v2.pk]},
        follow=True,
    )
    assert any("exactly one version" in m for m in _messages(response))
    assert not ModelVersion.objects.filter(stage=Stage.PRODUCTION).exists()


def test_changelist_archive_of_several_versions_applies_to_each(staff_client, iris_model):
    v1 = factories.version_create(iris_model, c=1.0)
    v2 = factories.version_create(iris_model, c=2.0)
    services.model_version_transition(version=v2, stage=Stage.ARCHIVED, actor="tests")
    response = staff_client.post(
        reverse("admin:mlregistry_modelversion_changelist"),
        {"action": "archive", "_selected_action": [v1.pk, v2.pk]},
        follow=True,
    )
    messages = _messages(response)
    assert "iris v1 is now in archived." in messages
    assert "iris v2 is in archived: archive is not offered from there." in messages


def _model_url(model) -> str:
    return reverse("admin:mlregistry_registeredmodel_change", args=[model.pk])


def test_model_page_offers_one_click_rollback_and_shows_the_whole_timeline(
    staff_client, iris_model
):
    v1 = factories.version_create(iris_model, c=1.0)
    v2 = factories.version_create(iris_model, c=2.0)
    services.model_version_transition(version=v1, stage=Stage.PRODUCTION, actor="tests")
    services.model_version_transition(version=v2, stage=Stage.PRODUCTION, actor="tests")
    html = staff_client.get(_model_url(iris_model)).content.decode()
    assert "Roll back to v1" in html
    assert f'name="expected_production" value="{v2.pk}"' in html
    assert html.count("<li>") >= 3  # three transitions in the timeline


def test_rollback_button_restores_the_previous_version(staff_client, iris_model):
    v1 = factories.version_create(iris_model, c=1.0)
    v2 = factories.version_create(iris_model, c=2.0)
    services.model_version_transition(version=v1, stage=Stage.PRODUCTION, actor="tests")
    services.model_version_transition(version=v2, stage=Stage.PRODUCTION, actor="tests")
    response = staff_client.post(
        reverse("admin:mlregistry_registeredmodel_rollback", args=[iris_model.pk]),
        {"expected_production": v2.pk},
        follow=True,
    )
    v1.refresh_from_db()
    assert v1.stage == Stage.PRODUCTION
    assert "Rolled back: iris v1 serves production again." in _messages(response)
    assert StageTransition.objects.filter(version=v1, comment="rollback").exists()


def test_rollback_without_history_is_refused_with_a_message(staff_client, iris_model):
    factories.version_create(iris_model)
    response = staff_client.post(
        reverse("admin:mlregistry_registeredmodel_rollback", args=[iris_model.pk]), follow=True
    )
    assert any(m.startswith("Rollback refused:") for m in _messages(response))


def test_rollback_is_post_only_and_needs_the_promote_permission(client, staff_client, iris_model):
    url = reverse("admin:mlregistry_registeredmodel_rollback", args=[iris_model.pk])
    assert staff_client.get(url).status_code == 405
    viewer = factories.user_create("viewer", staff=True, perms=["view_registeredmodel"])
    client.force_login(viewer)
    assert client.post(url).status_code == 403


def test_rollback_action_from_the_model_list(staff_client, iris_model):
    v1 = factories.version_create(iris_model, c=1.0)
    v2 = factories.version_create(iris_model, c=2.0)
    services.model_version_transition(version=v1, stage=Stage.PRODUCTION, actor="tests")
    services.model_version_transition(version=v2, stage=Stage.PRODUCTION, actor="tests")
    other = factories.registered_model_create("other")
    response = staff_client.post(
        reverse("admin:mlregistry_registeredmodel_changelist"),
        {"action": "rollback_production", "_selected_action": [iris_model.pk, other.pk]},
        follow=True,
    )
    messages = _messages(response)
    assert "iris: v1 is back in production." in messages
    assert any(m.startswith("other:") and "no previous" in m for m in messages)


def test_adding_a_version_through_the_admin_goes_to_the_upload_page(staff_client):
    response = staff_client.get(reverse("admin:mlregistry_modelversion_add"))
    assert response["Location"] == UPLOAD_URL


def test_model_list_shows_production_version_and_counts(staff_client, iris_model):
    v1 = factories.version_create(iris_model)
    services.model_version_transition(version=v1, stage=Stage.PRODUCTION, actor="tests")
    html = staff_client.get(reverse("admin:mlregistry_registeredmodel_changelist")).content.decode()
    assert "v1" in html


def test_new_model_in_the_admin_is_owned_by_its_creator(staff_client, staff_user):
    staff_client.post(
        reverse("admin:mlregistry_registeredmodel_add"),
        {
            "name": "wine",
            "task": "classification",
            "tags": "[]",
            "description": "",
            "versions-TOTAL_FORMS": "0",
            "versions-INITIAL_FORMS": "0",
        },
    )
    from mlregistry.models import RegisteredModel

    assert RegisteredModel.objects.get(name="wine").owner == staff_user


def test_rollback_with_a_malformed_form_changes_nothing(staff_client, iris_model):
    response = staff_client.post(
        reverse("admin:mlregistry_registeredmodel_rollback", args=[iris_model.pk]),
        {"expected_production": "not-a-number"},
        follow=True,
    )
    assert "The rollback form was incomplete." in _messages(response)


def test_confirming_a_preview_of_a_deleted_model_is_not_found(staff_client, iris_model):
    _preview(staff_client, iris_model)
    token = _pending_token(staff_client)
    parked = staff_client.session[PENDING_SESSION_KEY][token]["name"]
    iris_model.delete()
    response = staff_client.post(UPLOAD_URL, {"token": token, "confirm": "1"})
    assert response.status_code == 404
    assert not storages["artifacts"].exists(parked)


def test_version_page_offers_no_stage_moves_without_the_promote_permission(client, iris_model):
    v1 = factories.version_create(iris_model)
    viewer = factories.user_create("viewer", staff=True, perms=["view_modelversion"])
    client.force_login(viewer)
    page = client.get(reverse("admin:mlregistry_modelversion_change", args=[v1.pk]))
    assert page.context["stage_moves"] == []


def test_staging_action_on_one_version_asks_for_confirmation(staff_client, iris_model):
    v1 = factories.version_create(iris_model)
    response = staff_client.post(
        reverse("admin:mlregistry_modelversion_changelist"),
        {"action": "promote_to_staging", "_selected_action": [v1.pk]},
    )
    assert response["Location"] == _transition_url(v1, Stage.STAGING)


def test_stage_moves_offered_fit_the_current_stage(staff_client, iris_model):
    """The production version offers only Archive (rollback lives on the model page); a
    staging version no "promote to staging"; an archived one may come back."""
    expected = {
        Stage.NONE: ["staging", "production", "archived"],
        Stage.STAGING: ["production", "archived"],
        Stage.PRODUCTION: ["archived"],
        Stage.ARCHIVED: ["staging", "production"],
    }
    for stage, moves in expected.items():
        version = factories.version_create(iris_model)
        if stage != Stage.NONE:
            services.model_version_transition(version=version, stage=stage, actor="tests")
        page = staff_client.get(reverse("admin:mlregistry_modelversion_change", args=[version.pk]))
        assert re.findall(r'data-stage="(\w+)"', page.content.decode()) == moves, stage


def test_a_move_not_offered_is_refused_by_url_and_by_bulk_action(staff_client, iris_model):
    version = factories.version_create(iris_model)
    services.model_version_transition(version=version, stage=Stage.PRODUCTION, actor="tests")
    url = reverse("admin:mlregistry_modelversion_transition", args=[version.pk, "staging"])
    response = staff_client.post(url, {"comment": "x"}, follow=True)
    assert "is in production: promote to staging is not offered" in " ".join(_messages(response))
    response = _action(staff_client, "promote_to_staging", [version.pk])
    assert "is in production: promote to staging is not offered" in " ".join(_messages(response))
    version.refresh_from_db()
    assert version.stage == Stage.PRODUCTION


def test_metrics_show_four_significant_digits_with_the_full_value_on_hover(
    staff_client, iris_model
):
    version = factories.version_create(iris_model, metrics={"accuracy": 0.9777777777777777})
    for url in (
        reverse("admin:mlregistry_modelversion_changelist"),
        reverse("admin:mlregistry_registeredmodel_change", args=[iris_model.pk]),
    ):
        html = staff_client.get(url).content.decode()
        assert '<span class="mlr-metric" title="0.9777777777777777">0.9778</span>' in html, url
    page = staff_client.get(reverse("admin:mlregistry_modelversion_change", args=[version.pk]))
    # Dates in one format: ISO 8601 with the UTC offset.
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+0000", page.content.decode())


def test_params_leave_out_scikit_learn_placeholders(staff_client, iris_model):
    version = factories.version_create(iris_model)
    assert "deprecated" not in version.params.values()
    ModelVersion.objects.filter(pk=version.pk).update(params={"C": 1.0, "penalty": "deprecated"})
    page = staff_client.get(reverse("admin:mlregistry_modelversion_change", args=[version.pk]))
    html = page.content.decode()
    assert "&quot;C&quot;: 1.0" in html and "deprecated" not in html
