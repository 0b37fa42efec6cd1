"""The audit trail: every service that changes state writes exactly one AuditEvent per object
it changes, in its own transaction; the admin and the API leave the same rows; staff read the
trail at /api/v1/audit-events/ and in a read-only admin."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from knox.models import AuthToken

from config.logging import request_id_var
from mlregistry import access, services
from mlregistry.audit import audit_record
from mlregistry.models import (
    ApiClientPolicy,
    AuditEvent,
    RegisteredModel,
    Stage,
    StageTransition,
)
from predictions import services as prediction_services
from quality import training
from tests import factories

pytestmark = pytest.mark.django_db

MODELS_URL = "/api/v1/models/"
AUDIT_URL = "/api/v1/audit-events/"


class _Audit:
    """The audit rows a block of code added (newest last)."""

    def __enter__(self):
        self.before = AuditEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
        return self

    def __exit__(self, *exc):
        self.rows = list(AuditEvent.objects.filter(pk__gt=self.before).order_by("pk"))

    @property
    def one(self) -> AuditEvent:
        assert len(self.rows) == 1, [(r.verb, r.object_type, r.changes) for r in self.rows]
        return self.rows[0]


@pytest.fixture
def admin_client(client, db):
    user = User.objects.create_superuser("boss", password="pw")
    client.force_login(user)
    return client


# --- Each service: one row, the right diff ------------------------------------------------


def test_model_create_update_delete_each_write_one_row_with_their_diff(staff_user):
    with _Audit() as audit:
        model = services.registered_model_create(name="iris", actor=staff_user, description="a")
    row = audit.one
    assert (row.verb, row.object_type, row.object_id) == (
        "create",
        "mlregistry.registeredmodel",
        str(model.pk),
    )
    assert (row.actor_user, row.actor_name, row.model_name) == (staff_user, "staff", "iris")
    assert row.changes["name"] == [None, "iris"]
    assert row.changes["description"] == [None, "a"]
    assert row.changes["owner"] == [None, staff_user.pk]

    with _Audit() as audit:
        services.registered_model_update(
            model=model, actor=staff_user, description="b", tags=["x"], task="classification"
        )
    # The task did not change: it is not in the diff.
    assert audit.one.verb == "update"
    assert audit.one.changes == {"description": ["a", "b"], "tags": [{}, {"x": ""}]}

    with _Audit() as audit:
        services.registered_model_update(model=model, actor=staff_user, description="b")
    assert audit.rows == []  # nothing changed, nothing written

    pk = model.pk
    with _Audit() as audit:
        services.registered_model_delete(model=model, actor="job:cleanup")
    row = audit.one
    assert (row.verb, row.object_id, row.actor_user, row.actor_name) == (
        "delete",
        str(pk),
        None,
        "job:cleanup",
    )
    assert row.changes["name"] == ["iris", None]


def test_model_rename_is_audited_and_serves_under_the_new_name(staff_api, iris_model):
    with _Audit() as audit:
        services.registered_model_update(model=iris_model, actor="tests", name="iris-2")
    assert audit.one.changes == {"name": ["iris", "iris-2"]}
    assert audit.one.model_name == "iris-2"
    assert RegisteredModel.objects.get(pk=iris_model.pk).name == "iris-2"


def test_update_refuses_a_taken_name_and_writes_nothing(iris_model):
    factories.registered_model_create("other")
    with _Audit() as audit, pytest.raises(services.ConflictError):
        services.registered_model_update(model=iris_model, actor="tests", name="other")
    assert audit.rows == []
    assert RegisteredModel.objects.get(pk=iris_model.pk).name == "iris"


def test_version_create_update_delete_each_write_one_row(iris_model):
    with _Audit() as audit:
        version = factories.version_create(iris_model, metrics={"accuracy": 0.9})
    row = audit.one
    assert (row.verb, row.object_type, row.model_name) == (
        "create",
        "mlregistry.modelversion",
        "iris",
    )
    assert row.changes["version"] == [None, 1]
    assert row.changes["artifact_sha256"] == [None, version.artifact_sha256]
    assert row.changes["metrics"] == [None, {"accuracy": 0.9}]
    assert "reference_sample" not in row.changes

    with _Audit() as audit:
        services.model_version_update(version=version, actor="tests", metrics={"accuracy": 0.95})
    assert audit.one.changes == {"metrics": [{"accuracy": 0.9}, {"accuracy": 0.95}]}

    with _Audit() as audit:
        services.model_version_delete(version=version, actor="tests")
    assert audit.one.verb == "delete"
    assert audit.one.changes["version"] == [1, None]


def test_each_stage_change_writes_one_row_beside_its_stage_transition(iris_model):
    first = factories.version_create(iris_model, c=1.0)
    second = factories.version_create(iris_model, c=2.0)
    with _Audit() as audit:
        services.model_version_transition(
            version=first, stage=Stage.PRODUCTION, actor="tests", comment="go"
        )
    assert audit.one.verb == "transition"
    assert audit.one.changes == {"stage": ["none", "production"], "comment": [None, "go"]}

    # Promoting the second archives the first: one row per version whose stage changed.
    with _Audit() as audit:
        services.model_version_transition(version=second, stage=Stage.PRODUCTION, actor="tests")
    assert [(r.object_id, r.changes["stage"]) for r in audit.rows] == [
        (str(first.pk), ["production", "archived"]),
        (str(second.pk), ["none", "production"]),
    ]
    assert StageTransition.objects.count() == 3

    with _Audit() as audit:
        services.model_version_rollback(model=iris_model, actor="tests")
    assert [r.changes["stage"] for r in audit.rows] == [
        ["production", "archived"],
        ["archived", "production"],
    ]


def test_traffic_split_set_and_clear_write_one_row_each(iris_model):
    first = factories.version_create(iris_model, c=1.0)
    factories.version_create(iris_model, c=2.0)
    services.model_version_transition(version=first, stage=Stage.PRODUCTION, actor="tests")
    with _Audit() as audit:
        prediction_services.traffic_split_set(
            model=iris_model,
            splits=[{"version": 1, "weight": 90}, {"version": 2, "weight": 10}],
            actor="tests",
        )
    assert audit.one.verb == "split_set"
    assert audit.one.changes == {"split": [{}, {"1": 90, "2": 10}]}
    with _Audit() as audit:
        prediction_services.traffic_split_clear(model=iris_model, actor="tests")
    assert audit.one.verb == "split_clear"
    assert audit.one.changes == {"split": [{"1": 90, "2": 10}, None]}


def test_tokens_users_and_client_policies_are_audited(staff_user, iris_model):
    client = factories.user_create("client")
    with _Audit() as audit:
        token, _ = access.api_token_create(user=client, actor=staff_user)
    assert (audit.one.verb, audit.one.object_type, audit.one.object_id) == (
        "create",
        "knox.authtoken",
        token.token_key,
    )
    with _Audit() as audit:
        assert access.api_tokens_revoke(tokens=[token, token], actor=staff_user) == 1
    assert audit.one.verb == "revoke"
    assert audit.one.changes == {"user": ["client", None]}

    with _Audit() as audit:
        policy = access.api_client_policy_save(
            user=client, allowed_models=[iris_model], actor=staff_user, note="n"
        )
    assert audit.one.verb == "create"
    assert audit.one.changes == {"allowed_models": [None, ["iris"]], "note": [None, "n"]}
    with _Audit() as audit:
        access.api_client_policy_save(user=client, allowed_models=[], actor=staff_user, note="n")
    assert audit.one.changes == {"allowed_models": [["iris"], []]}
    with _Audit() as audit:
        access.api_client_policy_delete(policy=policy, actor=staff_user)
    assert audit.one.verb == "delete"
    assert not ApiClientPolicy.objects.exists()

    with _Audit() as audit:
        assert access.user_deactivate(users=[client], actor=staff_user) == 1
        assert access.user_deactivate(users=[client], actor=staff_user) == 0
    assert (audit.one.verb, audit.one.object_type, audit.one.changes) == (
        "deactivate",
        "auth.user",
        {"is_active": [True, False]},
    )


def test_datasets_and_training_jobs_are_audited(iris_model):
    with _Audit() as audit:
        dataset = factories.iris_dataset_create(actor="tests")
    assert (audit.one.verb, audit.one.object_type) == ("create", "quality.dataset")
    assert audit.one.changes["name"] == [None, "iris-data"]
    with _Audit() as audit:
        training.training_job_create(
            model=iris_model,
            dataset=dataset,
            actor="tests",
            estimator="LogisticRegression",
            enqueue=False,
        )
    assert (audit.one.verb, audit.one.object_type, audit.one.model_name) == (
        "create",
        "quality.trainingjob",
        "iris",
    )
    assert audit.one.changes["estimator"] == [None, "LogisticRegression"]


def test_the_request_id_of_the_acting_request_is_recorded(iris_model):
    token = request_id_var.set("req-123")
    try:
        with _Audit() as audit:
            services.registered_model_update(model=iris_model, actor="tests", description="x")
    finally:
        request_id_var.reset(token)
    assert audit.one.request_id == "req-123"


def test_an_api_request_records_its_request_id(staff_api):
    response = staff_api.post(MODELS_URL, {"name": "iris"}, format="json")
    assert response.status_code == 201
    assert AuditEvent.objects.get().request_id == response["X-Request-ID"]


# --- Same transaction ----------------------------------------------------------------------


def test_audit_record_refuses_to_run_outside_a_transaction(iris_model):
    # pytest-django wraps each test in a transaction; only autocommit mode shows the refusal.
    connection = transaction.get_connection()
    in_block, connection.in_atomic_block = connection.in_atomic_block, False
    try:
        with pytest.raises(RuntimeError, match="inside the service's transaction"):
            audit_record(actor="tests", verb="update", obj=iris_model)
    finally:
        connection.in_atomic_block = in_block
    assert not AuditEvent.objects.filter(verb="update").exists()


def test_audit_record_refuses_an_object_of_another_database(iris_model):
    iris_model._state.db = "elsewhere"
    with pytest.raises(RuntimeError, match="one transaction cannot hold both"):
        audit_record(actor="tests", verb="update", obj=iris_model)


def test_a_transition_that_rolls_back_leaves_no_audit_row(iris_model, monkeypatch):
    version = factories.version_create(iris_model)
    before = AuditEvent.objects.count()

    def fail(**kwargs):
        # Fault injected on purpose: the write after the audit row fails.
        raise RuntimeError("disk full")

    monkeypatch.setattr(StageTransition.objects, "create", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        services.model_version_transition(version=version, stage=Stage.STAGING, actor="tests")
    assert AuditEvent.objects.count() == before
    version.refresh_from_db()
    assert version.stage == Stage.NONE


def test_a_refused_delete_leaves_no_audit_row(iris_model):
    version = factories.version_create(iris_model)
    services.model_version_transition(version=version, stage=Stage.PRODUCTION, actor="tests")
    before = AuditEvent.objects.count()
    with pytest.raises(services.ConflictError):
        services.registered_model_delete(model=iris_model, actor="tests")
    with pytest.raises(services.ConflictError):
        services.model_version_delete(version=version, actor="tests")
    assert AuditEvent.objects.count() == before


# --- The admin writes what the API writes --------------------------------------------------


def _comparable(row: AuditEvent) -> tuple:
    changes = {k: v for k, v in row.changes.items() if k != "owner"}
    return row.verb, row.object_type, row.model_name, changes


def _admin_model_form(**fields) -> dict:
    return {
        "task": "classification",
        "description": "",
        "tags": "[]",
        "versions-TOTAL_FORMS": "0",
        "versions-INITIAL_FORMS": "0",
        "versions-MIN_NUM_FORMS": "0",
        "versions-MAX_NUM_FORMS": "1000",
        **fields,
    }


def test_the_admin_and_the_api_write_the_same_model_rows(admin_client, staff_api):
    with _Audit() as api:
        assert staff_api.post(MODELS_URL, {"name": "iris"}, format="json").status_code == 201
        response = staff_api.patch(f"{MODELS_URL}iris/", {"description": "d"}, format="json")
        assert response.status_code == 200
        assert staff_api.delete(f"{MODELS_URL}iris/").status_code == 204

    with _Audit() as admin:
        response = admin_client.post(
            reverse("admin:mlregistry_registeredmodel_add"), _admin_model_form(name="iris")
        )
        assert response.status_code == 302, response.context["adminform"].form.errors
        model = RegisteredModel.objects.get(name="iris")
        assert model.owner.username == "boss"
        response = admin_client.post(
            reverse("admin:mlregistry_registeredmodel_change", args=[model.pk]),
            _admin_model_form(
                name="iris",
                description="d",
                **{"versions-TOTAL_FORMS": "0", "versions-INITIAL_FORMS": "0"},
            ),
        )
        assert response.status_code == 302
        response = admin_client.post(
            reverse("admin:mlregistry_registeredmodel_delete", args=[model.pk]), {"post": "yes"}
        )
        assert response.status_code == 302

    assert [_comparable(r) for r in admin.rows] == [_comparable(r) for r in api.rows]
    assert [r.verb for r in admin.rows] == ["create", "update", "delete"]
    assert {r.actor_name for r in admin.rows} == {"boss"}


def test_an_admin_rename_is_one_audited_update(admin_client, iris_model):
    with _Audit() as audit:
        response = admin_client.post(
            reverse("admin:mlregistry_registeredmodel_change", args=[iris_model.pk]),
            _admin_model_form(name="iris-renamed"),
        )
    assert response.status_code == 302
    assert audit.one.changes == {"name": ["iris", "iris-renamed"]}


def test_the_admin_edits_version_metrics_through_the_service(admin_client, iris_model):
    version = factories.version_create(iris_model, metrics={"accuracy": 0.9})
    with _Audit() as audit:
        response = admin_client.post(
            reverse("admin:mlregistry_modelversion_change", args=[version.pk]),
            {"metrics": '{"accuracy": 0.95}', "metadata": "{}"},
        )
    assert response.status_code == 302
    assert audit.one.changes == {"metrics": [{"accuracy": 0.9}, {"accuracy": 0.95}]}
    assert audit.one.actor_name == "boss"


def test_the_admin_saves_client_policies_through_the_service(admin_client, iris_model):
    client = factories.user_create("client")
    with _Audit() as audit:
        response = admin_client.post(
            reverse("admin:mlregistry_apiclientpolicy_add"),
            {"user": client.pk, "allowed_models": [iris_model.pk], "note": ""},
        )
    assert response.status_code == 302
    assert audit.one.changes == {"allowed_models": [None, ["iris"]], "note": [None, ""]}
    policy = ApiClientPolicy.objects.get()
    assert list(policy.allowed_models.all()) == [iris_model]
    with _Audit() as audit:
        response = admin_client.post(
            reverse("admin:mlregistry_apiclientpolicy_delete", args=[policy.pk]), {"post": "yes"}
        )
    assert response.status_code == 302
    assert audit.one.verb == "delete"


# --- The endpoint --------------------------------------------------------------------------


def test_the_audit_endpoint_is_for_staff_only(anon_api, client_api):
    assert anon_api.get(AUDIT_URL).status_code == 401
    assert client_api.get(AUDIT_URL).status_code == 403


def test_the_audit_endpoint_filters_by_model_actor_verb_and_since(staff_api, staff_user):
    iris = services.registered_model_create(name="iris", actor=staff_user)
    services.registered_model_create(name="wine", actor="job:seed")
    services.registered_model_update(model=iris, actor="job:seed", description="x")
    AuditEvent.objects.filter(model_name="wine").update(
        created_at=timezone.now() - timedelta(days=2)
    )

    def listed(**params):
        response = staff_api.get(AUDIT_URL, params)
        assert response.status_code == 200, response.json()
        return [(r["model_name"], r["actor"], r["verb"]) for r in response.json()["results"]]

    assert listed() == [("iris", "job:seed", "update"), ("iris", "staff", "create"),
                        ("wine", "job:seed", "create")]  # fmt: skip
    assert listed(model="iris") == [("iris", "job:seed", "update"), ("iris", "staff", "create")]
    assert listed(actor="job:seed") == [
        ("iris", "job:seed", "update"),
        ("wine", "job:seed", "create"),
    ]
    assert listed(verb="create", actor="staff") == [("iris", "staff", "create")]
    since = (timezone.now() - timedelta(days=1)).isoformat()
    assert [m for m, _, _ in listed(since=since)] == ["iris", "iris"]

    response = staff_api.get(AUDIT_URL, {"page_size": 1})
    body = response.json()
    assert body["count"] == 3 and set(body) >= {"next", "previous", "results"}
    assert body["results"][0]["changes"] == {"description": ["", "x"]}


def test_a_malformed_since_is_a_400_naming_the_field(staff_api):
    response = staff_api.get(AUDIT_URL, {"since": "yesterday"})
    assert response.status_code == 400
    assert "since" in str(response.json())


# --- The admin is read-only ----------------------------------------------------------------


def test_audit_events_are_read_only_in_the_admin(admin_client, iris_model):
    event = AuditEvent.objects.get()
    changelist = reverse("admin:mlregistry_auditevent_changelist")
    assert admin_client.get(changelist).status_code == 200
    for query in ("?verb__exact=create", "?actor_name=tests", "?object_type=x"):
        assert admin_client.get(changelist + query).status_code == 200
    assert admin_client.get(reverse("admin:mlregistry_auditevent_add")).status_code == 403
    change_url = reverse("admin:mlregistry_auditevent_change", args=[event.pk])
    page = admin_client.get(change_url)
    assert page.status_code == 200
    assert b'name="verb"' not in page.content  # shown, not editable
    assert admin_client.post(change_url, {"verb": "forged"}).status_code == 403
    delete_url = reverse("admin:mlregistry_auditevent_delete", args=[event.pk])
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 403
    event.refresh_from_db()
    assert event.verb == "create"


def test_the_create_api_token_command_is_audited(db):
    from django.core.management import call_command

    factories.user_create("client")
    with _Audit() as audit:
        call_command("create_api_token", "client", stdout=None)
    assert audit.one.actor_name == "manage.py create_api_token"
    assert audit.one.object_id == AuthToken.objects.get().token_key
