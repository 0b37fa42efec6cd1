"""Aliases: names, the service that moves them, its audit and the API around it."""

import pytest

from config.errors import ConflictError, NotFoundError, ValidationFailed
from mlregistry import services
from mlregistry.models import AuditEvent, ModelAlias, Stage
from tests import factories


@pytest.fixture
def iris_three(iris_model):
    return [factories.version_create(iris_model, c=c) for c in (1.0, 2.0, 3.0)]


def _alias_events(model_name="iris"):
    return AuditEvent.objects.filter(
        model_name=model_name, verb__in=["alias_set", "alias_delete"]
    ).order_by("id")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "name", ["latest", "v3", "v10", "Champion", "1st", "", "a" * 65, "chäm", "a b", "x/y"]
)
def test_malformed_or_reserved_alias_is_refused_naming_the_field(iris_model, iris_three, name):
    with pytest.raises(ValidationFailed) as refused:
        services.model_alias_set(model=iris_model, alias=name, version=1, actor="tests")
    assert "alias" in refused.value.fields
    assert not ModelAlias.objects.exists() and not _alias_events().exists()


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["champion", "challenger", "shadow", "a", "v", "v3a", "a_b-c9"])
def test_well_formed_alias_names_are_accepted(iris_model, iris_three, name):
    row = services.model_alias_set(model=iris_model, alias=name, version=2, actor="tests")
    assert (row.alias, row.version.version) == (name, 2)


@pytest.mark.django_db
def test_alias_set_creates_then_moves_with_one_audit_row_per_move(
    iris_model, iris_three, staff_user
):
    services.model_alias_set(model=iris_model, alias="champion", version=1, actor=staff_user)
    services.model_alias_set(
        model=iris_model, alias="champion", version=iris_three[1], actor="job:ci", comment="ab"
    )
    # Pointing it where it already points is no move: nothing written.
    services.model_alias_set(model=iris_model, alias="champion", version=2, actor=staff_user)
    row = ModelAlias.objects.get(model=iris_model, alias="champion")
    assert row.version.version == 2 and row.updated_by_name == "job:ci"
    events = list(_alias_events())
    assert [e.changes["version"] for e in events] == [[None, 1], [1, 2]]
    assert [e.actor_name for e in events] == ["staff", "job:ci"]
    assert events[1].changes["comment"] == [None, "ab"]
    assert events[0].object_repr == "iris@champion"


@pytest.mark.django_db
def test_a_version_can_hold_several_aliases_and_each_alias_one_version(iris_model, iris_three):
    for alias in ("champion", "shadow"):
        services.model_alias_set(model=iris_model, alias=alias, version=3, actor="tests")
    assert sorted(iris_three[2].aliases.values_list("alias", flat=True)) == ["champion", "shadow"]


@pytest.mark.django_db
def test_alias_to_unknown_foreign_or_archived_version_is_refused(iris_model, iris_three):
    with pytest.raises(ValidationFailed) as unknown:
        services.model_alias_set(model=iris_model, alias="champion", version=9, actor="tests")
    assert "version" in unknown.value.fields
    other = factories.registered_model_create("other")
    foreign = factories.version_create(other)
    with pytest.raises(ValidationFailed):
        services.model_alias_set(model=iris_model, alias="champion", version=foreign, actor="t")
    services.model_version_transition(version=iris_three[0], stage=Stage.ARCHIVED, actor="t")
    with pytest.raises(ConflictError):
        services.model_alias_set(model=iris_model, alias="champion", version=1, actor="tests")
    assert not ModelAlias.objects.exists()


@pytest.mark.django_db
def test_alias_delete_is_audited_and_a_missing_alias_is_404(iris_model, iris_three):
    services.model_alias_set(model=iris_model, alias="champion", version=2, actor="tests")
    assert services.model_alias_delete(model=iris_model, alias="champion", actor="ops") == 2
    assert not ModelAlias.objects.exists()
    assert _alias_events().last().changes["version"] == [2, None]
    with pytest.raises(NotFoundError):
        services.model_alias_delete(model=iris_model, alias="champion", actor="ops")
    with pytest.raises(ValidationFailed):
        services.model_alias_delete(model=iris_model, alias="latest", actor="ops")


@pytest.mark.django_db
def test_archiving_removes_the_versions_aliases_in_the_same_transaction(iris_model, iris_three):
    for alias in ("champion", "shadow"):
        services.model_alias_set(model=iris_model, alias=alias, version=1, actor="tests")
    services.model_alias_set(model=iris_model, alias="challenger", version=2, actor="tests")
    archived = services.model_version_transition(
        version=iris_three[0], stage=Stage.ARCHIVED, actor="ops"
    )
    assert [(r.alias, r.version) for r in archived.aliases_removed] == [
        ("champion", 1),
        ("shadow", 1),
    ]
    assert list(ModelAlias.objects.values_list("alias", flat=True)) == ["challenger"]
    removals = _alias_events().filter(verb="alias_delete")
    assert removals.count() == 2 and all(e.actor_name == "ops" for e in removals)
    assert removals.first().changes["comment"] == [None, "v1 archived"]


@pytest.mark.django_db
def test_promotion_that_archives_the_previous_production_removes_its_aliases(
    iris_model, iris_three
):
    services.model_version_transition(version=iris_three[0], stage=Stage.PRODUCTION, actor="t")
    services.model_alias_set(model=iris_model, alias="champion", version=1, actor="tests")
    promoted = services.model_version_transition(
        version=iris_three[1], stage=Stage.PRODUCTION, actor="t"
    )
    assert [(r.alias, r.version) for r in promoted.aliases_removed] == [("champion", 1)]
    assert not ModelAlias.objects.exists()


@pytest.mark.django_db
def test_deleting_a_version_removes_its_aliases_and_returns_them(iris_model, iris_three):
    services.model_alias_set(model=iris_model, alias="champion", version=3, actor="tests")
    removed = services.model_version_delete(version=iris_three[2], actor="ops")
    assert [(r.alias, r.version) for r in removed] == [("champion", 3)]
    assert not ModelAlias.objects.exists()
    assert _alias_events().last().changes["comment"] == [None, "v3 deleted"]


@pytest.mark.django_db
def test_a_failed_archive_keeps_the_aliases(iris_model, iris_three, monkeypatch):
    """Fault injected on purpose: the transition's audit row fails after the aliases went."""
    services.model_alias_set(model=iris_model, alias="champion", version=1, actor="tests")

    def boom(**kwargs):
        raise RuntimeError("injected")

    monkeypatch.setattr(services.StageTransition.objects, "create", boom)
    with pytest.raises(RuntimeError):
        services.model_version_transition(version=iris_three[0], stage=Stage.ARCHIVED, actor="t")
    assert ModelAlias.objects.filter(alias="champion", version__version=1).exists()


# --- API ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_api_put_get_list_delete_alias(staff_api, client_api, iris_model, iris_three):
    url = "/api/v1/models/iris/aliases/champion"
    response = staff_api.put(url, {"version": 2, "comment": "wins"}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["alias"], body["version"], body["updated_by"]) == ("champion", 2, "staff")
    assert body["updated_at"]

    listed = client_api.get("/api/v1/models/iris/aliases").json()
    assert [(a["alias"], a["version"]) for a in listed] == [("champion", 2)]

    version = client_api.get(url).json()
    assert version["version"] == 2 and version["aliases"] == ["champion"]
    assert version == client_api.get("/api/v1/models/iris/versions/2/").json()
    # Every version body carries its aliases, in lists too.
    versions = client_api.get("/api/v1/models/iris/versions/").json()["results"]
    assert {v["version"]: v["aliases"] for v in versions} == {3: [], 2: ["champion"], 1: []}

    assert staff_api.delete(url).status_code == 204
    assert client_api.get(url).status_code == 404
    assert client_api.get("/api/v1/models/iris/aliases").json() == []


@pytest.mark.django_db
def test_api_latest_is_read_only_and_means_highest_not_archived(
    staff_api, client_api, iris_model, iris_three
):
    assert client_api.get("/api/v1/models/iris/aliases/latest").json()["version"] == 3
    services.model_version_transition(version=iris_three[2], stage=Stage.ARCHIVED, actor="t")
    assert client_api.get("/api/v1/models/iris/aliases/latest").json()["version"] == 2
    refused = staff_api.put("/api/v1/models/iris/aliases/latest", {"version": 1}, format="json")
    assert refused.status_code == 400 and "alias" in refused.json()["error"]["fields"]
    assert staff_api.delete("/api/v1/models/iris/aliases/latest").status_code == 400


@pytest.mark.django_db
def test_api_alias_writes_need_the_promote_permission(client_api, iris_model, iris_three):
    url = "/api/v1/models/iris/aliases/champion"
    assert client_api.put(url, {"version": 1}, format="json").status_code == 403
    editor = factories.user_create("editor", staff=True, perms=["change_modelversion"])
    api = __import__("rest_framework.test", fromlist=["APIClient"]).APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.token_create(editor)}")
    assert api.put(url, {"version": 1}, format="json").status_code == 403
    assert api.delete(url).status_code == 403
    assert not ModelAlias.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field"),
    [({}, "version"), ({"version": "x"}, "version"), ({"version": 0}, "version")],
)
def test_api_put_with_bad_body_is_400_naming_the_field(staff_api, iris_three, body, field):
    response = staff_api.put("/api/v1/models/iris/aliases/champion", body, format="json")
    assert response.status_code == 400 and field in response.json()["error"]["fields"]


@pytest.mark.django_db
def test_api_alias_errors(staff_api, client_api, iris_model, iris_three):
    url = "/api/v1/models/iris/aliases/champion"
    assert staff_api.put(url, {"version": 7}, format="json").status_code == 400
    assert (
        staff_api.put("/api/v1/models/nope/aliases/x", {"version": 1}, format="json").status_code
        == 404
    )
    assert client_api.get("/api/v1/models/iris/aliases/Not-An-Alias").status_code == 404
    assert client_api.get("/api/v1/models/nope/aliases").status_code == 404
    assert staff_api.delete(url).status_code == 404
    services.model_version_transition(version=iris_three[0], stage=Stage.ARCHIVED, actor="t")
    archived = staff_api.put(url, {"version": 1}, format="json")
    assert archived.status_code == 409 and archived.json()["error"]["fields"]["version"]


@pytest.mark.django_db
def test_api_transition_and_delete_say_which_aliases_went(staff_api, iris_model, iris_three):
    services.model_alias_set(model=iris_model, alias="champion", version=1, actor="tests")
    services.model_alias_set(model=iris_model, alias="shadow", version=2, actor="tests")
    moved = staff_api.post(
        "/api/v1/models/iris/versions/1/transition", {"stage": "archived"}, format="json"
    )
    assert moved.status_code == 200
    assert moved.json()["aliases_removed"] == [{"alias": "champion", "version": 1}]
    deleted = staff_api.delete("/api/v1/models/iris/versions/2/")
    assert deleted.status_code == 200
    assert deleted.json() == {
        "name": "iris",
        "version": 2,
        "deleted": True,
        "aliases_removed": [{"alias": "shadow", "version": 2}],
    }


@pytest.mark.django_db
def test_restricted_client_cannot_see_another_models_aliases(iris_model, iris_three):
    from mlregistry.models import ApiClientPolicy

    other = factories.registered_model_create("other")
    user = factories.user_create("limited")
    ApiClientPolicy.objects.create(user=user).allowed_models.set([other])
    api = __import__("rest_framework.test", fromlist=["APIClient"]).APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.token_create(user)}")
    assert api.get("/api/v1/models/iris/aliases").status_code == 404
    assert api.get("/api/v1/models/iris/aliases/latest").status_code == 404


def test_a_version_number_in_other_digits_is_refused_in_a_body_as_in_a_path(
    staff_api, iris_model, iris_three
):
    """Python's int() reads Arabic-Indic and full-width digits; a path with them is a 404, so
    a body naming a version with them is a 400 naming the field, not that version."""
    url = "/api/v1/models/iris/aliases/arabic"
    for number in ("\u0662", "\uff12", " \u0662 "):
        refused = staff_api.put(url, {"version": number}, format="json")
        assert refused.status_code == 400, (number, refused.content)
        assert "version" in refused.json()["error"]["fields"]
    assert staff_api.put(url, {"version": "2"}, format="json").status_code == 200


def test_deleting_an_alias_takes_the_format_override_of_the_query_string(staff_api, iris_model):
    version = factories.version_create(iris_model)
    services.model_alias_set(model=iris_model, alias="champion", version=version, actor="t")

    response = staff_api.delete("/api/v1/models/iris/aliases/champion?format=json&comment=done")

    assert response.status_code == 204, response.content
    assert not ModelAlias.objects.filter(alias="champion").exists()
