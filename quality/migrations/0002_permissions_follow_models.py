# The content types of the moved models take the quality app's label, so their permissions
# (and every group or user holding them), admin log entries and audit trail follow the models.

from django.db import migrations

MOVED = [("mlregistry", "dataset"), ("mlregistry", "trainingjob"), ("predictions", "driftreport")]


def _move(apps, schema_editor, *, to_app: str, back: bool) -> None:
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    LogEntry = apps.get_model("admin", "LogEntry")
    AuditEvent = apps.get_model("mlregistry", "AuditEvent")
    db = schema_editor.connection.alias
    for old_app, model in MOVED:
        source, target = (to_app, old_app) if back else (old_app, to_app)
        old = ContentType.objects.using(db).filter(app_label=source, model=model).first()
        if old is None:
            continue  # a fresh database: post_migrate creates the new content type
        new = ContentType.objects.using(db).filter(app_label=target, model=model).first()
        if new is None:
            old.app_label = target
            old.save(update_fields=["app_label"])
        else:
            # Both exist (the new one was created by a migrate run that stopped early): the
            # holders of each old permission get the new one, then the old rows go.
            for perm in Permission.objects.using(db).filter(content_type=old):
                twin = Permission.objects.using(db).filter(
                    content_type=new, codename=perm.codename
                ).first()
                if twin is None:
                    perm.content_type = new
                    perm.save(update_fields=["content_type"])
                    continue
                twin.group_set.add(*perm.group_set.all())
                twin.user_set.add(*perm.user_set.all())
                perm.delete()
            LogEntry.objects.using(db).filter(content_type=old).update(content_type=new)
            old.delete()
        AuditEvent.objects.using(db).filter(object_type=f"{source}.{model}").update(
            object_type=f"{target}.{model}"
        )


def forwards(apps, schema_editor):
    _move(apps, schema_editor, to_app="quality", back=False)


def backwards(apps, schema_editor):
    _move(apps, schema_editor, to_app="quality", back=True)


class Migration(migrations.Migration):

    dependencies = [
        ('quality', '0001_initial'),
        ('mlregistry', '0008_quality_models_moved_out'),
        ('predictions', '0008_drift_report_moved_out'),
        ('contenttypes', '0002_remove_content_type_name'),
        ('auth', '0012_alter_user_first_name_max_length'),
        ('admin', '0003_logentry_add_action_flag_choices'),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
