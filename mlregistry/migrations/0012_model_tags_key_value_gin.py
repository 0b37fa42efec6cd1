"""Model tags become key -> value (each former list entry a key with an empty value), and on
Postgres both tag columns get a GIN index, which `?tag=key:value` (jsonb @>) and `?tag=key`
(jsonb ?) use. SQLite has no GIN; its filters read the JSON per row."""

from django.db import migrations


def tags_to_key_value(apps, schema_editor):
    RegisteredModel = apps.get_model("mlregistry", "RegisteredModel")
    for model in RegisteredModel.objects.using(schema_editor.connection.alias).only("id", "tags"):
        tags = model.tags
        if isinstance(tags, dict):
            continue
        converted = {str(entry): "" for entry in (tags or [])}
        RegisteredModel.objects.using(schema_editor.connection.alias).filter(pk=model.pk).update(
            tags=converted
        )


def tags_to_list(apps, schema_editor):
    RegisteredModel = apps.get_model("mlregistry", "RegisteredModel")
    for model in RegisteredModel.objects.using(schema_editor.connection.alias).only("id", "tags"):
        if isinstance(model.tags, dict):
            RegisteredModel.objects.using(schema_editor.connection.alias).filter(
                pk=model.pk
            ).update(tags=sorted(model.tags))


_GIN = [
    ("mlregistry_registeredmodel", "registeredmodel_tags_gin"),
    ("mlregistry_modelversion", "modelversion_tags_gin"),
]


def gin_create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for table, index in _GIN:
        schema_editor.execute(f'CREATE INDEX IF NOT EXISTS "{index}" ON "{table}" USING gin (tags)')


def gin_drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for _, index in _GIN:
        schema_editor.execute(f'DROP INDEX IF EXISTS "{index}"')


class Migration(migrations.Migration):
    dependencies = [("mlregistry", "0011_aliases_version_tags_lineage")]

    operations = [
        migrations.RunPython(tags_to_key_value, tags_to_list),
        migrations.RunPython(gin_create, gin_drop),
    ]
