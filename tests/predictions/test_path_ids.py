"""A name is never taken for an id: registration refuses all-digit names, the seeds'
/predict/{model_id} resolves an exact name first and ASCII-digit ids only, and any string in a
path parameter that parses integers ends in the right object or a 404, never a 500."""

import re
from urllib.parse import quote

import pytest
from django.contrib.auth.models import User
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from config.errors import ValidationFailed
from mlregistry import services
from mlregistry.models import RegisteredModel
from tests import factories
from tests.predictions.conftest import IRIS_ROW, iris_version, promote

pytestmark = pytest.mark.django_db

ASCII_ID = re.compile(r"[0-9]+")

# What one function reads as a number and another does not: ASCII and other scripts' digits
# (str.isdigit and int() take Arabic-Indic 16, isdigit alone takes a superscript 2), signs,
# spaces, dots, zeros.
OTHER_DIGITS = "\u0661\u0662\u0663\u0664\u0665\u0666\u0660\u0669\u00b2\uff13"
numeric_looking = st.one_of(
    st.integers(min_value=0, max_value=10**25).map(str),
    st.text(alphabet="0123456789" + OTHER_DIGITS + "+-. \t_e", min_size=1, max_size=24),
    st.integers(min_value=0, max_value=50).map(lambda n: "0" * (n % 4) + str(n)),
)
HYPOTHESIS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _predict(api, path):
    return api.post(path, {"features": IRIS_ROW}, format="json")


@pytest.fixture
def served_models(db):
    """iris, other, and a model left from before all-digit names were refused whose name is
    `other`'s id: each with a production version."""
    iris = factories.registered_model_create("iris")
    other = factories.registered_model_create("other")
    legacy = factories.registered_model_create("legacy")
    RegisteredModel.objects.filter(pk=legacy.pk).update(name=str(other.pk))
    legacy.refresh_from_db()
    for c, model in enumerate((iris, other, legacy), start=1):
        promote(iris_version(model, c=float(c)))
    return {"iris": iris, "other": other, "legacy": legacy}


@pytest.mark.parametrize("name", ["16", "0", "007", "12345678901234567890"])
def test_registering_an_all_digit_name_is_refused_everywhere(staff_api, name):
    response = staff_api.post("/api/v1/models/", {"name": name}, format="json")
    assert response.status_code == 400
    assert "name" in response.json()["error"]["fields"]
    with pytest.raises(ValidationFailed):
        services.registered_model_create(name=name, actor="tests")
    from mlregistry.admin import RegisteredModelAdmin
    from mlregistry.models import RegisteredModel as Model

    form_class = RegisteredModelAdmin(Model, None).get_form(None)
    form = form_class(data={"name": name, "task": "classification", "tags": "[]"})
    assert not form.is_valid() and "name" in form.errors
    assert not RegisteredModel.objects.exists()


def test_names_with_a_digit_and_something_else_are_fine(staff_api):
    for name in ("model-16", "16a", "v2"):
        assert staff_api.post("/api/v1/models/", {"name": name}, format="json").status_code == 201


def test_an_exact_name_wins_over_an_id(client_api, served_models):
    other, legacy = served_models["other"], served_models["legacy"]
    response = _predict(client_api, f"/api/v1/predict/{other.pk}")
    assert response.status_code == 200 and response.json()["model"] == legacy.name
    iris = served_models["iris"]
    response = _predict(client_api, f"/api/v1/predict/{iris.pk}")
    assert response.status_code == 200 and response.json()["model"] == "iris"


def test_an_alias_resolved_by_id_is_forgotten_when_its_model_is_deleted(
    client_api, served_models, django_capture_on_commit_callbacks
):
    iris = served_models["iris"]
    assert _predict(client_api, f"/api/v1/predict/{iris.pk}").status_code == 200  # cached
    promote(iris.versions.get(), stage="archived")
    with django_capture_on_commit_callbacks(execute=True):
        services.registered_model_delete(model=iris, actor="tests")
    assert _predict(client_api, f"/api/v1/predict/{iris.pk}").status_code == 404


@pytest.mark.parametrize(
    "text",
    [
        "\u0661",
        "\u0661\u0666",
        "\u00b2",
        "\uff13",
        "+1",
        "-1",
        " 1",
        "1 ",
        "1.0",
        "1e0",
        "0x1",
        "9" * 30,
        "9" * 5000,
    ],
)
def test_strings_that_only_look_numeric_are_404(client_api, served_models, text):
    # ids 1.. exist (served_models): a wrong reading of the text would answer 200.
    assert _predict(client_api, f"/api/v1/predict/{quote(text)}").status_code == 404


def _expected_alias(text: str, models: dict) -> str | None:
    by_name = {m.name: m.name for m in models.values()}
    if ASCII_ID.fullmatch(text):
        if text in by_name:
            return text
        by_id = {m.pk: m.name for m in models.values()}
        return by_id.get(int(text))
    return by_name.get(text)


@HYPOTHESIS
@given(text=numeric_looking)
@example(text="iris")
@example(text="0001")
def test_the_alias_ends_in_the_right_model_or_404(client_api, served_models, text):
    response = _predict(client_api, f"/api/v1/predict/{quote(text, safe='')}")
    expected = _expected_alias(text, served_models)
    if expected is None:
        assert response.status_code == 404, (text, response.status_code)
    else:
        assert response.status_code == 200, (text, response.json())
        assert response.json()["model"] == expected


@HYPOTHESIS
@given(text=numeric_looking)
@example(text="01")
@example(text="2147483648")
def test_version_numbers_in_paths_end_in_the_right_version_or_404(staff_api, served_models, text):
    """Every route with a version number: predict, detail, transition, delete."""
    path = f"/api/v1/models/iris/versions/{quote(text, safe='')}"
    is_v1 = bool(ASCII_ID.fullmatch(text)) and int(text) == 1
    predicted = _predict(staff_api, f"{path}/predict")
    detail = staff_api.get(f"{path}/")
    transition = staff_api.post(f"{path}/transition", {"stage": "production"}, format="json")
    deleted = staff_api.delete(f"{path}/")
    if is_v1:
        assert predicted.status_code == 200 and predicted.json()["model_version"] == 1
        assert detail.status_code == 200 and detail.json()["version"] == 1
        assert transition.status_code == 409  # already in production
        assert deleted.status_code == 409  # the production version is not deleted
    else:
        for response in (predicted, detail, transition, deleted):
            assert response.status_code == 404, (text, response.status_code)


@HYPOTHESIS
@given(text=numeric_looking)
def test_training_job_ids_in_paths_are_404(served_models, text):
    from rest_framework.test import APIClient

    user = User.objects.filter(username="trainer").first() or User.objects.create_superuser(
        "trainer", password="pw"
    )
    api = APIClient()
    api.force_authenticate(user)
    response = api.get(f"/api/v1/models/iris/training-jobs/{quote(text, safe='')}")
    assert response.status_code == 404, (text, response.status_code)


def test_the_migration_reports_names_made_only_of_digits(served_models, capsys):
    from importlib import import_module

    from django.apps import apps

    migration = import_module("mlregistry.migrations.0004_version_counter_numeric_names")
    migration.report_numeric_names(apps, None)
    legacy = served_models["legacy"]
    assert f"'{legacy.name}' (id {legacy.pk})" in capsys.readouterr().out
    assert RegisteredModel.objects.filter(pk=legacy.pk).exists()  # reported, kept
