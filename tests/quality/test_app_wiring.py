"""How the quality app plugs into the others: task names beat rows refer to, the maintainers'
rights, and the registry's hooks."""

import pytest
from django.contrib.auth.models import Permission

from config.celery import app as celery_app
from config.schedules import DEFAULT_SCHEDULES
from mlregistry import hooks
from mlregistry.management.commands.create_api_token import maintainers_group_ensure
from tests import factories


def test_every_default_schedule_names_a_registered_task():
    celery_app.loader.import_default_modules()
    missing = [e["task"] for e in DEFAULT_SCHEDULES if e["task"] not in celery_app.tasks]
    assert not missing
    # The names beat rows and queued messages already hold, though the code moved.
    for name in (
        "mlregistry.tasks.training_job_run_task",
        "mlregistry.tasks.retraining_scheduled_task",
        "predictions.tasks.drift_check_task",
    ):
        assert celery_app.tasks[name].__module__ == "quality.tasks"


@pytest.mark.django_db
def test_registry_maintainers_get_the_quality_rights():
    group = maintainers_group_ensure()
    codenames = set(
        Permission.objects.filter(group=group, content_type__app_label="quality").values_list(
            "codename", flat=True
        )
    )
    assert {"add_dataset", "add_trainingjob", "view_driftreport"} <= codenames
    assert "delete_dataset" not in codenames


@pytest.mark.django_db
def test_online_metrics_without_a_provider_say_no_feedback(monkeypatch, iris_model):
    # The provider unset on purpose: the registry answers alone when predictions is absent.
    monkeypatch.setattr(hooks, "_online_metrics", None)
    assert hooks.online_metrics_get(version=factories.version_create(iris_model)) == {
        "feedback_count": 0
    }
