"""The one place the default beat schedule is defined.

`manage.py setup_schedules` writes these into django-celery-beat's tables (editable in the
admin afterwards; an existing entry keeps the operator's edits). Crontab fields are UTC.
"""

DEFAULT_SCHEDULES = [
    {
        "name": "backup-daily",
        "task": "backups.tasks.backup_create_task",
        "crontab": {"minute": "0", "hour": "2"},
        "enabled": True,
    },
    {
        "name": "retention-cleanup-hourly",
        "task": "backups.tasks.cleanup_retention_task",
        "crontab": {"minute": "15"},
        "enabled": True,
    },
    {
        "name": "drift-check-daily",
        "task": "predictions.tasks.drift_check_task",
        "crontab": {"minute": "30", "hour": "3"},
        "enabled": True,
    },
    {
        "name": "retraining-weekly",
        "task": "mlregistry.tasks.retraining_scheduled_task",
        "crontab": {"minute": "0", "hour": "4", "day_of_week": "0"},
        "enabled": True,
    },
]

# Proves beat -> broker -> worker works; the WorkerDown alert watches its timestamp.
DEFAULT_SCHEDULES.append(
    {
        "name": "worker-heartbeat",
        "task": "config.tasks.worker_heartbeat_task",
        "crontab": {"minute": "*"},
        "enabled": True,
    }
)

# Fails jobs whose worker died (config.job_heartbeats), so they do not say "running" for hours.
DEFAULT_SCHEDULES.append(
    {
        "name": "stalled-jobs-reaper",
        "task": "backups.tasks.stalled_jobs_reap_task",
        "crontab": {"minute": "*"},
        "enabled": True,
    }
)

# Sends again the webhook deliveries whose task was lost (a broker outage, a worker that died).
DEFAULT_SCHEDULES.append(
    {
        "name": "webhook-deliveries-resume",
        "task": "mlregistry.webhooks.tasks.webhook_deliveries_resume_task",
        "crontab": {"minute": "*"},
        "enabled": True,
    }
)
