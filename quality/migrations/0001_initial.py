# The quality app's models moved here from mlregistry (Dataset, TrainingJob) and predictions
# (DriftReport) without moving a row: this migration only tells Django's state where they
# live; the tables were created by mlregistry 0002 and predictions 0002 and keep their names.

import django.db.models.deletion
import mlregistry.storage
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('mlregistry', '0007_auditevent'),
        ('predictions', '0007_report_refused_feedback'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name='Dataset',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('name', models.SlugField(max_length=100, unique=True)),
                        ('description', models.TextField(blank=True)),
                        ('source', models.CharField(choices=[('file', 'Uploaded file (CSV / Parquet)'), ('sql', 'SQL query')], max_length=10)),
                        ('file', models.FileField(blank=True, max_length=255, storage=mlregistry.storage.get_artifact_storage, upload_to='')),
                        ('file_format', models.CharField(blank=True, choices=[('csv', 'CSV'), ('parquet', 'Parquet')], max_length=10)),
                        ('file_sha256', models.CharField(blank=True, max_length=64)),
                        ('sql_connection', models.CharField(blank=True, max_length=100)),
                        ('sql_query', models.TextField(blank=True)),
                        ('target_column', models.CharField(max_length=200)),
                        ('feature_columns', models.JSONField(default=list)),
                        ('missing_policy', models.CharField(choices=[('drop', 'Drop rows with a missing value'), ('impute_mean', 'Impute the column mean'), ('impute_median', 'Impute the column median'), ('error', 'Fail the job')], default='drop', max_length=20)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        'db_table': 'mlregistry_dataset',
                        'ordering': ['name'],
                    },
                ),
                migrations.CreateModel(
                    name='TrainingJob',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('estimator', models.CharField(blank=True, max_length=100)),
                        ('estimator_params', models.JSONField(blank=True, default=dict)),
                        ('policy', models.CharField(choices=[('stage_only', 'Register the candidate in staging only'), ('auto_promote', 'Promote the candidate when it beats the champion')], default='stage_only', max_length=20)),
                        ('metric', models.CharField(blank=True, max_length=50)),
                        ('margin', models.FloatField(default=0.0)),
                        ('cv_folds', models.PositiveSmallIntegerField(default=5)),
                        ('holdout_fraction', models.FloatField(default=0.2)),
                        ('random_state', models.IntegerField(default=0)),
                        ('status', models.CharField(choices=[('queued', 'Queued'), ('running', 'Running'), ('succeeded', 'Succeeded'), ('failed', 'Failed')], default='queued', max_length=20)),
                        ('decision', models.CharField(blank=True, choices=[('', '—'), ('promoted', 'Promoted: the candidate beat the champion'), ('promoted_no_champion', 'Promoted: there was no champion'), ('kept_champion', 'Kept the champion: the candidate was not better enough'), ('staged', 'Staged only (policy)')], default='', max_length=30)),
                        ('error_type', models.CharField(blank=True, max_length=50)),
                        ('error', models.TextField(blank=True)),
                        ('cv_scores', models.JSONField(blank=True, default=list)),
                        ('candidate_score', models.FloatField(blank=True, null=True)),
                        ('champion_score', models.FloatField(blank=True, null=True)),
                        ('details', models.JSONField(blank=True, default=dict)),
                        ('attempts', models.PositiveIntegerField(default=0)),
                        ('recurring', models.BooleanField(default=False)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('started_at', models.DateTimeField(blank=True, null=True)),
                        ('finished_at', models.DateTimeField(blank=True, null=True)),
                        ('heartbeat_at', models.DateTimeField(blank=True, null=True)),
                        ('candidate_version', models.OneToOneField(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='training_job', to='mlregistry.modelversion')),
                        ('champion_version', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='mlregistry.modelversion')),
                        ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                        ('dataset', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='training_jobs', to='quality.dataset')),
                        ('model', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='training_jobs', to='mlregistry.registeredmodel')),
                        ('template', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='scheduled_runs', to='quality.trainingjob')),
                    ],
                    options={
                        'db_table': 'mlregistry_trainingjob',
                        'ordering': ['-created_at', '-id'],
                    },
                ),
                migrations.CreateModel(
                    name='DriftReport',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('status', models.CharField(choices=[('ok', 'No drift'), ('drift', 'Drift detected'), ('no_reference', 'No reference sample'), ('insufficient_data', 'Too few served rows')], max_length=20)),
                        ('window_start', models.DateTimeField()),
                        ('window_end', models.DateTimeField()),
                        ('reference_size', models.PositiveIntegerField(default=0)),
                        ('sample_size', models.PositiveIntegerField(default=0)),
                        ('threshold', models.FloatField()),
                        ('features', models.JSONField(default=list)),
                        ('drifted_features', models.JSONField(default=list)),
                        ('created_at', models.DateTimeField(auto_now_add=True, db_index=True)),
                        ('model', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='mlregistry.registeredmodel')),
                        ('version', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='drift_reports', to='mlregistry.modelversion')),
                    ],
                    options={
                        'db_table': 'predictions_driftreport',
                        'ordering': ['-window_end', '-id'],
                        'constraints': [models.UniqueConstraint(fields=('version', 'window_end'), name='unique_drift_window')],
                    },
                ),
            ],
        ),
    ]
