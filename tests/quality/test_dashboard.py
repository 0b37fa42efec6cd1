from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from backups.models import Backup, BackupStatus
from backups.templatetags.backups_admin import backup_dashboard
from mlregistry import services
from mlregistry.models import Stage
from predictions.models import PredictionLog
from quality import dashboard
from quality.models import DriftReport, DriftStatus
from tests import factories

pytestmark = pytest.mark.django_db


def _log(version, *, ago: timedelta, request_id: str) -> PredictionLog:
    return PredictionLog.objects.create(
        request_id=request_id,
        model=version.model,
        version=version,
        output=0,
        created_at=timezone.now() - ago,
    )


def test_prediction_volume_counts_the_last_24_hours_per_model_and_hour(iris_model):
    version = factories.version_create(iris_model)
    _log(version, ago=timedelta(minutes=5), request_id="a")
    _log(version, ago=timedelta(hours=3), request_id="b")
    _log(version, ago=timedelta(hours=30), request_id="old")
    volume = dashboard.prediction_volume(hours=24)
    assert volume.total == 2
    assert volume.per_model == {"iris": 2}
    assert sum(h.count for h in volume.hourly) == 2
    assert volume.peak == 1
    assert len(volume.hourly) in (24, 25)
    assert volume.hourly == sorted(volume.hourly, key=lambda h: h.hour)


def test_prediction_volume_is_zero_without_traffic():
    volume = dashboard.prediction_volume()
    assert (volume.total, volume.per_model, volume.peak) == (0, {}, 0)


def test_dashboard_models_carry_their_production_version(iris_model):
    v1 = factories.version_create(iris_model)
    factories.version_create(iris_model, c=2.0)
    services.model_version_transition(version=v1, stage=Stage.PRODUCTION, actor="tests")
    factories.registered_model_create("empty")
    rows = {m.name: m for m in dashboard.dashboard_models()}
    assert [v.version for v in rows["iris"].production] == [1]
    assert rows["iris"].version_count == 2
    assert rows["empty"].production == []


def test_admin_index_shows_the_dashboard(client, staff_user, iris_model):
    v1 = factories.version_create(iris_model)
    services.model_version_transition(
        version=v1, stage=Stage.PRODUCTION, actor=staff_user, comment="first release"
    )
    _log(v1, ago=timedelta(minutes=1), request_id="r1")
    client.force_login(staff_user)
    html = client.get(reverse("admin:index")).content.decode()
    assert 'id="registry-dashboard"' in html
    assert 'id="dash-volume-total">1<' in html
    assert "first release" in html
    assert reverse("admin:mlregistry_modelversion_change", args=[v1.pk]) in html
    assert 'id="dash-backup"' in html and 'id="dash-drift"' in html
    assert "Site administration" in html  # Django's own app list is still there


def test_admin_index_hides_the_dashboard_from_staff_without_registry_access(client):
    user = factories.user_create("ops", staff=True)
    client.force_login(user)
    html = client.get(reverse("admin:index")).content.decode()
    assert 'id="registry-dashboard"' not in html


def test_pending_uploads_prune_removes_only_old_parked_files(iris_model, settings):
    import io
    import os

    pending = services.model_version_preview(
        model=iris_model, artifact=io.BytesIO(factories.iris_classifier_bytes()), actor="tests"
    )
    fresh = services.model_version_preview(
        model=iris_model, artifact=io.BytesIO(factories.iris_classifier_bytes(2.0)), actor="tests"
    )
    storage = services.get_artifact_storage()
    two_days_ago = (timezone.now() - timedelta(days=2)).timestamp()
    os.utime(storage.path(pending.name), (two_days_ago, two_days_ago))
    assert services.pending_uploads_prune(older_than=timedelta(days=1)) == 1
    assert not storage.exists(pending.name) and storage.exists(fresh.name)


def test_pending_uploads_prune_without_any_upload_is_a_no_op():
    assert services.pending_uploads_prune() == 0


def _backup(slot: str, *, started_at, status: str, verified: bool = False) -> Backup:
    return Backup.objects.create(
        slot=slot,
        status=status,
        actor="tests",
        started_at=started_at,
        verified_at=started_at if verified else None,
    )


def test_backup_panel_reads_status_and_verification():
    assert backup_dashboard() is None
    now = timezone.now()
    _backup("a", started_at=now - timedelta(days=2), status=BackupStatus.VERIFIED, verified=True)
    _backup("b", started_at=now, status=BackupStatus.VERIFIED, verified=True)
    newest = backup_dashboard()
    assert newest["when"] == now
    assert (newest["status"], newest["verified"]) == ("Verified", True)
    assert newest["label"] == str(Backup.objects.get(slot="b"))
    assert newest["last_verified"] is None


def test_backup_panel_also_names_the_newest_verified_one_while_another_runs():
    now = timezone.now()
    _backup("a", started_at=now - timedelta(days=1), status=BackupStatus.VERIFIED, verified=True)
    _backup("b", started_at=now, status=BackupStatus.RUNNING)
    newest = backup_dashboard()
    assert (newest["status"], newest["verified"]) == ("Running", False)
    assert newest["last_verified"]["when"] == now - timedelta(days=1)


def _report(version, *, status: str, features: list, ago: timedelta = timedelta(0)):
    now = timezone.now() - ago
    return DriftReport.objects.create(
        model=version.model,
        version=version,
        status=status,
        window_start=now - timedelta(days=1),
        window_end=now,
        threshold=0.05,
        features=features,
    )


def test_drift_alerts_list_only_reports_that_found_drift_newest_first(iris_model):
    version = factories.version_create(iris_model)
    petal = {"feature": "petal_length", "p_value": 1e-6, "p_value_adjusted": 4e-6, "drift": True}
    sepal = {"feature": "sepal_width", "p_value": 0.4, "p_value_adjusted": 1.0, "drift": False}
    _report(version, status=DriftStatus.OK, features=[sepal])
    older = _report(version, status=DriftStatus.DRIFT, features=[petal], ago=timedelta(hours=2))
    newer = _report(version, status=DriftStatus.DRIFT, features=[sepal, petal])
    DriftReport.objects.filter(pk=older.pk).update(created_at=timezone.now() - timedelta(hours=2))
    alerts = dashboard.drift_alerts()
    assert [a["label"] for a in alerts] == [str(newer), str(older)]
    assert alerts[0]["features"] == [
        {"feature": "petal_length", "p_value": 1e-6, "p_value_adjusted": 4e-6}
    ]
    assert alerts[0]["version"] == version


def test_drift_alerts_are_empty_without_drift():
    assert dashboard.drift_alerts() == []


def test_admin_index_says_when_no_backup_was_made(admin_client):
    html = admin_client.get(reverse("admin:index")).content.decode()
    assert "No backup has been made yet." in html
    assert "No drift detected." in html
