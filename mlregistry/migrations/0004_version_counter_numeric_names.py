"""Version numbers come from a per-model counter (never reused), started at each model's
highest existing number; names made only of digits are refused from now on, and the ones
already registered are reported (kept: renaming would break their clients)."""

import logging

from django.db import migrations, models
from django.db.models import Max

import mlregistry.models

logger = logging.getLogger("mlregistry.migrations")


def start_counters(apps, schema_editor):
    RegisteredModel = apps.get_model("mlregistry", "RegisteredModel")
    for model in RegisteredModel.objects.annotate(highest=Max("versions__version")):
        if model.highest:
            RegisteredModel.objects.filter(pk=model.pk).update(last_version_number=model.highest)


def report_numeric_names(apps, schema_editor):
    RegisteredModel = apps.get_model("mlregistry", "RegisteredModel")
    numeric = [
        (pk, name)
        for pk, name in RegisteredModel.objects.values_list("pk", "name")
        if mlregistry.models.MODEL_ID_PATTERN.fullmatch(name)
    ]
    if numeric:
        listed = ", ".join(f"{name!r} (id {pk})" for pk, name in numeric)
        message = (
            f"{len(numeric)} registered model name(s) are made only of digits: {listed}. "
            "They keep working (/predict/{model_id} tries an exact name first), but new ones "
            "are refused; consider renaming them."
        )
        logger.warning(message)
        print(f"\n  {message}")  # migrate prints here: where an operator looks


class Migration(migrations.Migration):
    dependencies = [
        ("mlregistry", "0003_api_client_policy"),
    ]

    operations = [
        migrations.AddField(
            model_name="registeredmodel",
            name="last_version_number",
            field=models.PositiveIntegerField(default=0, editable=False),
        ),
        migrations.AlterField(
            model_name="registeredmodel",
            name="name",
            field=models.SlugField(
                max_length=100, unique=True, validators=[mlregistry.models.validate_not_an_id]
            ),
        ),
        migrations.RunPython(start_counters, migrations.RunPython.noop),
        migrations.RunPython(report_numeric_names, migrations.RunPython.noop),
    ]
