"""Feedback is now checked against the version (predictions.validation.actual_refusal): true is
no class 1, 1.0 is class 1, a regressor's outcome is a finite number. Stored feedback that
would now be refused is counted and reported here, and kept: an operator decides what to do
with it (the online accuracy reads it as before)."""

import logging
from collections import Counter

from django.db import migrations

from predictions.validation import actual_refusal

logger = logging.getLogger("predictions.migrations")


def report_refused_feedback(apps, schema_editor):
    PredictionLog = apps.get_model("predictions", "PredictionLog")
    ModelVersion = apps.get_model("mlregistry", "ModelVersion")
    versions = {
        pk: (classes, task == "regression")
        for pk, classes, task in ModelVersion.objects.values_list("pk", "classes", "model__task")
    }
    refused: Counter[int] = Counter()
    examples: list[str] = []
    rows = PredictionLog.objects.filter(feedback_at__isnull=False).values_list(
        "request_id", "version_id", "actual"
    )
    for request_id, version_id, actual in rows.iterator(chunk_size=5000):
        if version_id not in versions:
            continue
        classes, regression = versions[version_id]
        if actual_refusal(actual, classes=classes, regression=regression) is not None:
            refused[version_id] += 1
            if len(examples) < 10:
                examples.append(f"{request_id}: {actual!r}")
    if refused:
        total = sum(refused.values())
        message = (
            f"{total} stored feedback row(s) hold an outcome that feedback now refuses (a "
            f"boolean for a numeric class, a value outside the version's classes, a non-finite "
            f"number): kept unchanged. By version id: {dict(refused)}. "
            f"Examples: {'; '.join(examples)}."
        )
        logger.warning(message)
        print(f"\n  {message}")  # migrate prints here: where an operator looks


class Migration(migrations.Migration):
    dependencies = [
        ("predictions", "0006_prediction_log_lighter_writes"),
        ("mlregistry", "0004_version_counter_numeric_names"),
    ]

    operations = [migrations.RunPython(report_refused_feedback, migrations.RunPython.noop)]
