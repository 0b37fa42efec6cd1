# Dataset and TrainingJob now live in the quality app (quality 0001). Only Django's state
# forgets them here: their tables stay, under their names, for quality's models to use.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('mlregistry', '0007_auditevent'),
        ('quality', '0001_initial'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.DeleteModel(name='TrainingJob'),
                migrations.DeleteModel(name='Dataset'),
            ],
        ),
    ]
