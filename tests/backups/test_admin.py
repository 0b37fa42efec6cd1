import pytest
from django.contrib.auth.models import User

from backups import services
from backups.models import Backup, BackupStatus
from config.celery import app
from tests.backups.conftest import backup_write

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.storage]


@pytest.fixture
def admin_client(client):
    client.force_login(User.objects.create_superuser("root", password="pw"))
    return client


def test_backup_list_shows_backups_and_the_run_button(admin_client, registry):
    backup = services.backup_create(slot="listed", actor="tests")
    page = admin_client.get("/admin/backups/backup/").content.decode()
    assert "listed" in page
    assert "Run backup now" in page
    assert admin_client.get(f"/admin/backups/backup/{backup.pk}/change/").status_code == 200


@pytest.fixture
def eager_tasks():
    # Eager for this test only: the real worker path has its own test (test_worker.py).
    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous


def test_run_backup_now_queues_the_backup_task(admin_client, registry, eager_tasks):
    response = admin_client.post("/admin/backups/backup/run-now/", follow=True)
    assert "Backup queued" in response.content.decode()
    backup = Backup.objects.get()
    assert backup.slot.startswith("admin-root-")
    assert backup.status == BackupStatus.VERIFIED


def test_run_backup_now_needs_a_post(admin_client):
    assert admin_client.get("/admin/backups/backup/run-now/").status_code == 405


def test_run_backup_now_needs_the_permission(client, db):
    staff = User.objects.create_user("viewer", password="pw", is_staff=True)
    client.force_login(staff)
    response = client.post("/admin/backups/backup/run-now/")
    assert response.status_code == 302
    assert not Backup.objects.exists()


def test_verify_action_reports_ok_and_corrupt_backups(admin_client, registry):
    good = services.backup_create(slot="good", actor="tests")
    bad = services.backup_create(slot="bad", actor="tests")
    backup_write(bad, "manifest.json", b"{}")

    response = admin_client.post(
        "/admin/backups/backup/",
        {"action": "verify", "_selected_action": [good.pk, bad.pk]},
        follow=True,
    )

    page = response.content.decode()
    assert f"Backup {good.pk} verified" in page
    assert "failed verification" in page
    bad.refresh_from_db()
    assert bad.status == BackupStatus.CORRUPT


def test_the_admin_dashboard_shows_the_newest_backup(admin_client, registry):
    backup = services.backup_create(slot="shown-on-dashboard", actor="tests")
    html = admin_client.get("/admin/").content.decode()
    assert str(backup) in html
    assert "verified" in html
