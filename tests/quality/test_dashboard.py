from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from mlregistry import services
from mlregistry.models import Stage, StageTransition
from predictions.models import PredictionLog
from quality import dashboard
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


def test_missing_backup_and_drift_apps_read_as_not_set_up():
    # Until the backups/drift branches land, their models are absent: the dashboard says so.
    if dashboard.backups_installed():
        pytest.skip("the backups app's Backup model is installed")
    assert dashboard.last_backup() is None
    if dashboard.drift_alerts() is not None:
        pytest.skip("a DriftReport model is installed")
    assert dashboard.drift_alerts() is None


def test_last_backup_reads_any_model_with_a_timestamp(monkeypatch, iris_model):
    # Stand-in on purpose: StageTransition plays the Backup model, which another branch builds.
    v1 = factories.version_create(iris_model)
    services.model_version_transition(version=v1, stage=Stage.STAGING, actor="tests")
    monkeypatch.setattr(dashboard, "_optional_model", lambda app, name: StageTransition)
    backup = dashboard.last_backup()
    assert backup["label"] == str(StageTransition.objects.get())
    assert backup["when"] is not None
    assert backup["verified"] is None


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


@pytest.fixture
def stand_in_tables():
    """Real tables shaped like what the backups and drift branches may build, in an isolated
    app registry; the dashboard is pointed at them because those models are not merged yet."""
    from django.db import connection, models
    from django.test.utils import isolate_apps

    with isolate_apps("backups", "predictions"):

        class Backup(models.Model):
            created_at = models.DateTimeField()
            status = models.CharField(max_length=20, choices=[("ok", "Succeeded")])
            verified_at = models.DateTimeField(null=True)

            class Meta:
                app_label = "backups"
                db_table = "test_standin_backup"

            def __str__(self) -> str:
                return f"backup of {self.created_at:%Y-%m-%d %H:%M}"

        class DriftReport(models.Model):
            created_at = models.DateTimeField()
            drift_detected = models.BooleanField(default=False)
            feature = models.CharField(max_length=50)

            class Meta:
                app_label = "predictions"
                db_table = "test_standin_driftreport"

            def __str__(self) -> str:
                return f"drift in {self.feature}"

        class StatusDriftReport(models.Model):
            created_at = models.DateTimeField()
            status = models.CharField(max_length=20)

            class Meta:
                app_label = "predictions"
                db_table = "test_standin_statusdrift"

            def __str__(self) -> str:
                return self.status

        created = [Backup, DriftReport, StatusDriftReport]
        with connection.schema_editor() as editor:
            for model in created:
                editor.create_model(model)
        try:
            yield {m.__name__: m for m in created}
        finally:
            with connection.schema_editor() as editor:
                for model in created:
                    editor.delete_model(model)


@pytest.mark.django_db(transaction=True)
def test_last_backup_reads_status_and_verification(monkeypatch, stand_in_tables):
    backup = stand_in_tables["Backup"]
    monkeypatch.setattr(dashboard, "_optional_model", lambda app, name: backup)
    assert dashboard.last_backup() is None
    now = timezone.now()
    backup.objects.create(created_at=now - timedelta(days=2), status="ok")
    backup.objects.create(created_at=now, status="ok", verified_at=now)
    newest = dashboard.last_backup()
    assert newest["when"] == now
    assert (newest["status"], newest["verified"]) == ("Succeeded", True)
    assert newest["last_verified"] is None


@pytest.mark.django_db(transaction=True)
def test_last_backup_also_names_the_newest_verified_one_while_another_runs(
    monkeypatch, stand_in_tables
):
    backup = stand_in_tables["Backup"]
    monkeypatch.setattr(dashboard, "_optional_model", lambda app, name: backup)
    now = timezone.now()
    backup.objects.create(created_at=now - timedelta(days=1), status="ok", verified_at=now)
    backup.objects.create(created_at=now, status="ok")
    newest = dashboard.last_backup()
    assert newest["verified"] is None
    assert newest["last_verified"]["when"] == now - timedelta(days=1)


@pytest.mark.django_db(transaction=True)
def test_drift_alerts_list_only_reports_that_found_drift(monkeypatch, stand_in_tables):
    report = stand_in_tables["DriftReport"]
    monkeypatch.setattr(dashboard, "_optional_model", lambda app, name: report)
    now = timezone.now()
    report.objects.create(created_at=now, drift_detected=False, feature="sepal_width")
    report.objects.create(created_at=now, drift_detected=True, feature="petal_length")
    assert [a["label"] for a in dashboard.drift_alerts()] == ["drift in petal_length"]


@pytest.mark.django_db(transaction=True)
def test_drift_alerts_fall_back_to_a_status_field(monkeypatch, stand_in_tables):
    report = stand_in_tables["StatusDriftReport"]
    monkeypatch.setattr(dashboard, "_optional_model", lambda app, name: report)
    report.objects.create(created_at=timezone.now(), status="ok")
    report.objects.create(created_at=timezone.now(), status="drift")
    assert len(dashboard.drift_alerts()) == 1


@pytest.mark.django_db(transaction=True)
def test_unmigrated_tables_read_as_missing(monkeypatch, stand_in_tables):
    from django.db import connection

    backup = stand_in_tables["Backup"]
    with connection.schema_editor() as editor:
        editor.delete_model(backup)
    try:
        monkeypatch.setattr(dashboard, "_optional_model", lambda app, name: backup)
        assert dashboard.last_backup() is None
        assert dashboard.drift_alerts() is None
    finally:
        with connection.schema_editor() as editor:
            editor.create_model(backup)
