"""The Celery broker down at the moment a request records work and sends its task: the answer
is a 503 with Retry-After (or an admin error message), never a 500 or a "queued" that no
worker will ever see, and the recorded work says it was not sent. The outage is a fault
injected on purpose: the app's broker points at a port nobody listens on."""

from __future__ import annotations

import io
import socket

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.contrib.messages import get_messages
from django.test import Client
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from config.celery import app as celery_app
from mlregistry import services
from mlregistry.models import Stage
from predictions.models import BatchJob, BatchStatus
from quality import training
from quality.models import TrainingJob, TrainingStatus
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def broker_down():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    saved = {
        key: celery_app.conf[key]
        for key in ("broker_url", "broker_transport_options", "broker_connection_timeout")
    }
    celery_app.conf.update(
        broker_url=f"amqp://guest:guest@127.0.0.1:{port}//",
        broker_transport_options={},
        broker_connection_timeout=1,
    )
    celery_app._pool = None
    celery_app.amqp._producer_pool = None
    yield
    celery_app.conf.update(saved)
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


@pytest.fixture
def iris():
    model = factories.registered_model_create("iris")
    version = factories.version_create(model)
    services.model_version_transition(version=version, stage=Stage.PRODUCTION, actor="tests")
    return model


def _api(*perms):
    from rest_framework.test import APIClient

    api = APIClient()
    api.credentials(
        HTTP_AUTHORIZATION="Bearer "
        + factories.token_create(factories.staff_create("jobs", extra_perms=list(perms)))
    )
    return api


def _parquet():
    x, _ = factories.iris_frame()
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(x.head(50), preserve_index=False), sink)
    sink.seek(0)
    sink.name = "rows.parquet"
    return sink


def _admin():
    from django.contrib.auth.models import User

    browser = Client()
    browser.force_login(User.objects.create_superuser("root", "root@example.org", "pw"))
    return browser


def _unavailable(response, job_word: str):
    assert response.status_code == 503, response.content
    assert response["Retry-After"]
    error = response.json()["error"]
    assert error["type"] == "broker_unavailable"
    assert job_word in error["message"]


def test_a_batch_job_the_broker_refused_is_a_503_and_failed_resumable(iris, broker_down):
    api = _api("add_batchjob", "cancel_batchjob", "view_batchjob")

    response = api.post("/api/v1/models/iris/batch-jobs", {"file": _parquet()}, format="multipart")

    _unavailable(response, "resume it")
    job = BatchJob.objects.get()
    assert (job.status, job.error_type) == (BatchStatus.FAILED, "unavailable")
    assert "could not be sent" in job.error

    again = api.post(f"/api/v1/models/iris/batch-jobs/{job.pk}/resume")

    _unavailable(again, "resume it")
    job.refresh_from_db()
    assert (job.status, job.error_type) == (BatchStatus.FAILED, "unavailable")


def test_a_training_job_the_broker_refused_is_a_503_and_failed(iris, broker_down):
    factories.iris_dataset_create()
    api = _api("add_dataset", "add_trainingjob")

    response = api.post(
        "/api/v1/models/iris/training-jobs", {"dataset": "iris-data"}, format="json"
    )

    _unavailable(response, "create it again")
    job = TrainingJob.objects.get()
    assert (job.status, job.error_type) == (TrainingStatus.FAILED, "unavailable")


def test_the_admin_says_when_the_broker_did_not_take_a_job(iris, broker_down):
    dataset = factories.iris_dataset_create()
    queued = training.training_job_create(model=iris, dataset=dataset, actor="t", enqueue=False)
    every = IntervalSchedule.objects.create(every=1, period="minutes")
    task = PeriodicTask.objects.create(
        name="heartbeat", task="config.tasks.worker_heartbeat_task", interval=every
    )
    browser = _admin()

    pages = [
        browser.post(
            "/admin/quality/trainingjob/",
            {"action": "run_again", "_selected_action": [queued.pk]},
            follow=True,
        ),
        browser.post("/admin/backups/backup/run-now/", follow=True),
        browser.post(
            "/admin/django_celery_beat/periodictask/",
            {"action": "run_tasks", "_selected_action": [task.pk]},
            follow=True,
        ),
    ]

    for page in pages:
        assert page.status_code == 200
        said = [(m.level_tag, str(m)) for m in get_messages(page.wsgi_request)]
        assert any(level == "error" and "broker" in text for level, text in said), said
    queued.refresh_from_db()
    assert queued.status == TrainingStatus.QUEUED  # a stuck job may still run somewhere


def test_a_bug_in_sending_is_a_500_and_the_job_still_says_it_was_not_sent(iris, monkeypatch):
    """Fault injected on purpose: the send raises an error no broker raises (a bug)."""
    from predictions.tasks import batch_job_start_task

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the send path")

    monkeypatch.setattr(batch_job_start_task, "apply_async", broken)
    api = _api("add_batchjob", "view_batchjob")
    api.raise_request_exception = False

    response = api.post("/api/v1/models/iris/batch-jobs", {"file": _parquet()}, format="multipart")

    assert response.status_code == 500
    job = BatchJob.objects.get()
    assert (job.status, job.error_type) == (BatchStatus.FAILED, "unavailable")
