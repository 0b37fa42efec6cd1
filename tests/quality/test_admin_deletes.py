"""Dataset and training-job deletes from the admin (the delete page and the bulk action) go
through the audited services: the same refusals, and one AuditEvent per deleted row."""

import pytest
from django.contrib.auth.models import User
from django.contrib.messages import get_messages
from django.urls import reverse

from config.errors import ConflictError, NotFoundError
from mlregistry.models import AuditEvent
from quality import training
from quality.models import Dataset, TrainingJob, TrainingStatus
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def boss(client):
    client.force_login(User.objects.create_superuser("boss", password="pw"))
    return client


def _job(model, dataset) -> TrainingJob:
    return training.training_job_create(
        model=model, dataset=dataset, actor="tests", estimator="LogisticRegression", enqueue=False
    )


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def test_admin_delete_page_deletes_a_dataset_through_the_service(boss):
    dataset = factories.iris_dataset_create()
    url = reverse("admin:quality_dataset_delete", args=[dataset.pk])
    assert boss.get(url).status_code == 200
    boss.post(url, {"post": "yes"})
    assert not Dataset.objects.exists()
    event = AuditEvent.objects.get(verb="delete")
    assert (event.object_type, event.actor_name) == ("quality.dataset", "boss")
    assert event.changes["name"] == ["iris-data", None]


def test_bulk_delete_of_training_jobs_audits_each_and_spares_a_running_one(boss, iris_model):
    dataset = factories.iris_dataset_create()
    done, running = _job(iris_model, dataset), _job(iris_model, dataset)
    TrainingJob.objects.filter(pk=running.pk).update(status=TrainingStatus.RUNNING)
    response = boss.post(
        reverse("admin:quality_trainingjob_changelist"),
        {"action": "delete_selected", "_selected_action": [done.pk, running.pk], "post": "yes"},
        follow=True,
    )
    assert list(TrainingJob.objects.values_list("pk", flat=True)) == [running.pk]
    deleted = AuditEvent.objects.get(verb="delete")
    assert (deleted.object_type, deleted.object_id) == ("quality.trainingjob", str(done.pk))
    assert deleted.changes["estimator"] == ["LogisticRegression", None]
    messages = _messages(response)
    assert any("is running" in m for m in messages), messages
    assert any("Deleted 1 training job" in m for m in messages), messages


def test_a_dataset_a_job_trained_on_is_kept(iris_model):
    dataset = factories.iris_dataset_create()
    job = _job(iris_model, dataset)
    with pytest.raises(ConflictError, match=f"#{job.pk}"):
        training.dataset_delete(dataset=dataset, actor="tests")
    assert Dataset.objects.filter(pk=dataset.pk).exists()
    assert not AuditEvent.objects.filter(verb="delete").exists()
    training.training_job_delete(job=job, actor="tests")
    training.dataset_delete(dataset=dataset, actor="tests")
    assert not Dataset.objects.exists()


def test_deleting_twice_is_not_found(iris_model):
    dataset = factories.iris_dataset_create()
    job = _job(iris_model, dataset)
    training.training_job_delete(job=job, actor="tests")
    with pytest.raises(NotFoundError):
        training.training_job_delete(job=job, actor="tests")
    training.dataset_delete(dataset=dataset, actor="tests")
    with pytest.raises(NotFoundError):
        training.dataset_delete(dataset=dataset, actor="tests")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("/admin/mlregistry/dataset/", "/admin/quality/dataset/"),
        ("/admin/mlregistry/trainingjob/7/change/?x=1", "/admin/quality/trainingjob/7/change/?x=1"),
        ("/admin/predictions/driftreport/3/change/", "/admin/quality/driftreport/3/change/"),
    ],
)
def test_old_admin_addresses_of_moved_models_redirect(boss, old, new):
    response = boss.get(old)
    assert (response.status_code, response["Location"]) == (301, new)


def test_the_registry_admin_is_not_redirected(boss):
    assert boss.get("/admin/mlregistry/registeredmodel/").status_code == 200
