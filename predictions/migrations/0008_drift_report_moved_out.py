# DriftReport now lives in the quality app (quality 0001). Only Django's state forgets it here:
# its table stays, under its name, for quality's model to use.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('predictions', '0007_report_refused_feedback'),
        ('quality', '0001_initial'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.DeleteModel(name='DriftReport'),
            ],
        ),
    ]
