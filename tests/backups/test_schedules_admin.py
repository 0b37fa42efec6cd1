"""Schedule changes made through the product (django-celery-beat's rows in our admin, and the
default entries written by setup_schedules) are audited like every other change."""

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from backups import schedules
from mlregistry.models import AuditEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def boss(client):
    client.force_login(User.objects.create_superuser("boss", password="pw"))
    return client


@pytest.fixture
def defaults():
    return schedules.schedules_ensure(actor="tests")


def _task(name: str = "drift-check-daily") -> PeriodicTask:
    return PeriodicTask.objects.get(name=name)


def test_setup_schedules_audits_each_entry_it_creates(defaults):
    events = AuditEvent.objects.filter(object_type="django_celery_beat.periodictask")
    assert sorted(e.object_repr.split(":")[0] for e in events) == sorted(defaults)
    drift = events.get(object_id=str(_task().pk))
    assert (drift.verb, drift.actor_name) == ("create", "tests")
    assert drift.changes["task"] == [None, "predictions.tasks.drift_check_task"]
    assert schedules.schedules_ensure(actor="tests") == []
    assert events.count() == len(defaults)


def test_admin_actions_disable_and_toggle_tasks_with_an_audit_row_each(boss, defaults):
    AuditEvent.objects.all().delete()
    changelist = reverse("admin:django_celery_beat_periodictask_changelist")
    drift, retrain = _task(), _task("retraining-weekly")
    pks = [drift.pk, retrain.pk]
    boss.post(changelist, {"action": "disable_tasks", "_selected_action": pks})
    assert not PeriodicTask.objects.filter(pk__in=pks, enabled=True).exists()
    assert AuditEvent.objects.filter(verb="update", actor_name="boss").count() == 2
    assert AuditEvent.objects.filter(object_id=str(drift.pk)).get().changes == {
        "enabled": [True, False]
    }
    boss.post(changelist, {"action": "disable_tasks", "_selected_action": pks})
    assert AuditEvent.objects.count() == 2  # nothing changed: nothing recorded
    boss.post(changelist, {"action": "toggle_tasks", "_selected_action": [drift.pk]})
    assert _task().enabled and not _task("retraining-weekly").enabled
    assert AuditEvent.objects.count() == 3


def test_admin_edit_of_a_crontab_records_the_changed_fields(boss, defaults):
    crontab = _task().crontab
    AuditEvent.objects.all().delete()
    url = reverse("admin:django_celery_beat_crontabschedule_change", args=[crontab.pk])
    response = boss.post(
        url,
        {
            "minute": "45",
            "hour": crontab.hour,
            "day_of_month": "*",
            "month_of_year": "*",
            "day_of_week": "*",
            "timezone": "UTC",
            "periodictask_set-TOTAL_FORMS": "0",
            "periodictask_set-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, response.content[:2000]
    event = AuditEvent.objects.get()
    assert (event.verb, event.object_type) == ("update", "django_celery_beat.crontabschedule")
    assert event.changes == {"minute": ["30", "45"]}


def test_admin_delete_of_a_schedule_audits_the_tasks_that_go_with_it(boss, defaults):
    crontab = CrontabSchedule.objects.get(pk=_task().crontab_id)
    users = set(PeriodicTask.objects.filter(crontab=crontab).values_list("pk", flat=True))
    AuditEvent.objects.all().delete()
    url = reverse("admin:django_celery_beat_crontabschedule_delete", args=[crontab.pk])
    boss.post(url, {"post": "yes"})
    assert not PeriodicTask.objects.filter(pk__in=users).exists()
    deleted = AuditEvent.objects.filter(verb="delete")
    assert {e.object_id for e in deleted if e.object_type.endswith("periodictask")} == {
        str(pk) for pk in users
    }
    assert deleted.filter(object_type="django_celery_beat.crontabschedule").count() == 1


def test_bulk_delete_of_periodic_tasks_is_audited(boss, defaults):
    AuditEvent.objects.all().delete()
    boss.post(
        reverse("admin:django_celery_beat_periodictask_changelist"),
        {"action": "delete_selected", "_selected_action": [_task().pk], "post": "yes"},
    )
    assert not PeriodicTask.objects.filter(name="drift-check-daily").exists()
    event = AuditEvent.objects.get()
    assert event.verb == "delete" and event.changes["name"] == ["drift-check-daily", None]
