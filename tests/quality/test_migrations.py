"""The quality app's models moved out of mlregistry and predictions without moving a row: a
database holding rows of the old layout, migrated forward, serves them from the new models, and
groups keep their rights through the moved permissions."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from mlregistry.models import AuditEvent
from quality.models import Dataset, DriftReport, TrainingJob

OLD_LAYOUT = [
    ("mlregistry", "0007_auditevent"),
    ("predictions", "0007_report_refused_feedback"),
    ("quality", None),
]


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    ContentType.objects.clear_cache()
    return executor.loader.project_state([t for t in targets if t[1]]).apps


def _latest():
    executor = MigrationExecutor(connection)
    return executor.loader.graph.leaf_nodes()


@pytest.mark.django_db(transaction=True)
def test_rows_of_the_old_layout_are_found_by_the_quality_models():
    old = _migrate(OLD_LAYOUT)
    OldContentType = old.get_model("contenttypes", "ContentType")
    assert OldContentType.objects.filter(app_label="quality").count() == 0
    registered = old.get_model("mlregistry", "RegisteredModel").objects.create(name="iris")
    version = old.get_model("mlregistry", "ModelVersion").objects.create(
        model=registered, version=1, artifact="a.skops", artifact_sha256="0" * 64, artifact_size=1
    )
    dataset = old.get_model("mlregistry", "Dataset").objects.create(
        name="iris-data", source="sql", sql_query="select 1", target_column="y"
    )
    job = old.get_model("mlregistry", "TrainingJob").objects.create(
        model=registered, dataset=dataset, candidate_version=version, status="succeeded"
    )
    now = timezone.now()
    report = old.get_model("predictions", "DriftReport").objects.create(
        model=registered,
        version=version,
        status="drift",
        window_start=now,
        window_end=now,
        threshold=0.05,
    )
    old.get_model("mlregistry", "AuditEvent").objects.create(
        actor_name="tests", verb="create", object_type="mlregistry.dataset", object_id=dataset.pk
    )
    # Rights granted under the old app labels, as an operator's groups hold them today.
    trainers = Group.objects.create(name="trainers")
    trainers.permissions.add(
        Permission.objects.get(content_type__app_label="mlregistry", codename="add_dataset"),
        Permission.objects.get(content_type__app_label="predictions", codename="add_driftreport"),
    )
    # A content type of the new label already there (a migrate run that stopped after
    # post_migrate): the old permission's holders are carried over to its twin.
    early = ContentType.objects.create(app_label="quality", model="trainingjob")
    Permission.objects.create(content_type=early, codename="add_trainingjob", name="Can add")
    trainers.permissions.add(
        Permission.objects.get(content_type__app_label="mlregistry", codename="add_trainingjob")
    )
    member = User.objects.create_user("trainer")
    member.groups.add(trainers)

    _migrate(_latest())

    assert Dataset.objects.get(pk=dataset.pk).name == "iris-data"
    moved_job = TrainingJob.objects.get(pk=job.pk)
    assert (moved_job.dataset_id, moved_job.candidate_version_id) == (dataset.pk, version.pk)
    assert DriftReport.objects.get(pk=report.pk).status == "drift"
    member = User.objects.get(pk=member.pk)
    assert member.has_perms(
        ["quality.add_dataset", "quality.add_trainingjob", "quality.add_driftreport"]
    )
    assert not ContentType.objects.filter(
        app_label__in=["mlregistry", "predictions"],
        model__in=["dataset", "trainingjob", "driftreport"],
    ).exists()
    assert AuditEvent.objects.get().object_type == "quality.dataset"


@pytest.mark.django_db(transaction=True)
def test_the_move_can_be_migrated_back():
    _migrate(OLD_LAYOUT)
    assert ContentType.objects.filter(app_label="mlregistry", model="dataset").exists()
    assert not ContentType.objects.filter(app_label="quality", model="dataset").exists()
    _migrate(_latest())
    assert ContentType.objects.get_for_model(Dataset).app_label == "quality"
