import io
import json

import pytest
from rest_framework.test import APIClient

from config.errors import ValidationFailed
from quality import training
from quality.models import Dataset, TrainingJob
from tests import factories

pytestmark = [pytest.mark.django_db, pytest.mark.storage]

NAMES = factories.IRIS_FEATURES


@pytest.fixture
def trainer_api(db) -> APIClient:
    user = factories.staff_create("trainer", extra_perms=["add_dataset", "add_trainingjob"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.token_create(user)}")
    return client


def iris_csv() -> io.BytesIO:
    x, y = factories.iris_frame()
    upload = io.BytesIO(x.assign(species=y).to_csv(index=False).encode())
    upload.name = "iris.csv"
    return upload


def test_post_dataset_uploads_a_csv(trainer_api):
    response = trainer_api.post(
        "/api/v1/datasets/",
        {
            "name": "iris-data",
            "target_column": "species",
            "feature_columns": '["sepal_length", "sepal_width", "petal_length", "petal_width"]',
            "file": iris_csv(),
        },
        format="multipart",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["name"], body["source"], body["file_format"]) == ("iris-data", "file", "csv")
    assert body["feature_columns"] == NAMES
    assert body["created_by"] == "trainer"
    assert trainer_api.get("/api/v1/datasets/").json()["results"][0]["name"] == "iris-data"


def test_post_dataset_with_sql_query(trainer_api, settings):
    settings.DATASET_DATABASES = {"warehouse": "default"}
    response = trainer_api.post(
        "/api/v1/datasets/",
        {
            "name": "from-sql",
            "target_column": "species",
            "feature_columns": json.dumps(NAMES),
            "sql_connection": "warehouse",
            "sql_query": "SELECT * FROM iris_rows",
            "missing_policy": "impute_mean",
        },
        format="multipart",
    )
    assert response.status_code == 201, response.json()
    assert response.json()["source"] == "sql"


def test_post_dataset_names_the_problem(trainer_api):
    response = trainer_api.post(
        "/api/v1/datasets/",
        {
            "name": "bad",
            "target_column": "species",
            "feature_columns": '["sepal_length", "colour"]',
            "file": iris_csv(),
        },
        format="multipart",
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "dataset_error"
    assert "'colour'" in error["message"]


def test_datasets_need_the_add_dataset_permission(staff_api, client_api):
    body = {"name": "x", "target_column": "y", "feature_columns": ["a"], "sql_query": "SELECT 1"}
    assert staff_api.post("/api/v1/datasets/", body, format="json").status_code == 403
    assert client_api.post("/api/v1/datasets/", body, format="json").status_code == 403


def test_post_training_job_queues_it_and_get_shows_its_numbers(
    trainer_api, iris_model, django_capture_on_commit_callbacks
):
    training.dataset_create(
        name="iris-data",
        actor="t",
        target_column="species",
        feature_columns=NAMES,
        file=iris_csv(),
    )

    with django_capture_on_commit_callbacks() as callbacks:
        response = trainer_api.post(
            "/api/v1/models/iris/training-jobs",
            {
                "dataset": "iris-data",
                "estimator": "LogisticRegression",
                "estimator_params": {"C": 2.0},
                "policy": "auto_promote",
                "margin": 0.01,
            },
            format="json",
        )

    assert response.status_code == 202, response.json()
    created = response.json()
    assert (created["status"], created["metric"], created["policy"]) == (
        "queued",
        "accuracy",
        "auto_promote",
    )
    assert len(callbacks) == 1
    training.training_job_run(job_id=created["id"])

    detail = trainer_api.get(f"/api/v1/models/iris/training-jobs/{created['id']}").json()
    assert detail["status"] == "succeeded"
    assert detail["decision"] == "promoted_no_champion"
    assert detail["candidate_version"] == 1
    assert len(detail["cv_scores"]) == 5
    listing = trainer_api.get("/api/v1/models/iris/training-jobs").json()["results"]
    assert [j["id"] for j in listing] == [created["id"]]


def test_post_training_job_refuses_what_is_not_on_the_allow_list(trainer_api, iris_model):
    training.dataset_create(
        name="d", actor="t", target_column="species", feature_columns=NAMES, file=iris_csv()
    )
    for body in (
        {"dataset": "d", "estimator": "sklearn.svm.SVC"},
        {"dataset": "d", "estimator": "LogisticRegression", "estimator_params": {"C": "x"}},
        {"dataset": "missing"},
    ):
        response = trainer_api.post("/api/v1/models/iris/training-jobs", body, format="json")
        assert response.status_code == 400, body
        assert response.json()["error"]["type"] == "validation_error"
    assert not TrainingJob.objects.exists()


def test_training_job_reads_404_for_unknown_model_or_job(trainer_api, iris_model):
    assert trainer_api.get("/api/v1/models/nope/training-jobs").status_code == 404
    assert trainer_api.get("/api/v1/models/iris/training-jobs/99").status_code == 404
    assert trainer_api.post("/api/v1/models/nope/training-jobs", {}).status_code == 404
    assert not Dataset.objects.exists()


@pytest.mark.parametrize(
    "content",
    [
        "sepal_length,species\n1.0,caf\xe9\n".encode("latin-1"),  # not UTF-8
        b"",  # no data
        b'a,"b\n1,2\n',  # a quote never closed
    ],
)
def test_an_unreadable_dataset_file_is_a_400_naming_the_file(trainer_api, content):
    upload = io.BytesIO(content)
    upload.name = "rows.csv"

    response = trainer_api.post(
        "/api/v1/datasets/",
        {
            "name": "unreadable",
            "target_column": "species",
            "feature_columns": '["sepal_length"]',
            "file": upload,
        },
        format="multipart",
    )

    assert response.status_code == 400, response.content
    assert "file" in response.json()["error"]["fields"]
    assert not Dataset.objects.exists()


@pytest.mark.parametrize("seed", [-1, 2**31, 2**32, 10**30])
def test_a_seed_the_database_cannot_hold_is_a_400_naming_random_state(
    trainer_api, iris_model, seed
):
    training.dataset_create(
        name="d", actor="t", target_column="species", feature_columns=NAMES, file=iris_csv()
    )

    response = trainer_api.post(
        "/api/v1/models/iris/training-jobs", {"dataset": "d", "random_state": seed}, format="json"
    )

    assert response.status_code == 400, response.content
    assert "random_state" in response.json()["error"]["fields"]
    assert not TrainingJob.objects.exists()
    with pytest.raises(ValidationFailed) as refused:
        training.training_job_create(
            model=iris_model, dataset=Dataset.objects.get(), actor="t", random_state=seed
        )
    assert "random_state" in refused.value.fields
