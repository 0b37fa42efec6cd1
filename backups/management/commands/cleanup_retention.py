from django.core.management.base import BaseCommand

from backups import services
from backups.jobs import job_run

# What each count of the cleanup summary is, in the order the cleanup runs.
LABELS = {
    "backups_deleted": "backups",
    "prediction_logs_pruned": "prediction logs",
    "artifacts_swept": "unreferenced artifact files",
    "pending_uploads_pruned": "parked uploads",
    "job_runs_pruned": "job runs",
    "drift_reports_pruned": "drift reports",
    "expired_tokens_deleted": "expired API tokens",
    "batch_jobs_pruned": "finished batch jobs",
}


class Command(BaseCommand):
    help = (
        "Deletes backups past BACKUP_RETENTION_DAYS (never the newest verified one), prediction "
        "logs, job runs and drift reports past their retention (never the newest job run or "
        "drift report), expired API tokens, unreferenced artifact files and stale parked "
        "uploads. --dry-run says what it would delete and deletes nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--dry-run", action="store_true", help="Report what would be deleted; delete nothing."
        )

    def handle(self, *args, **options):
        if options["dry_run"]:
            # No JobRun either: a dry run is not a cleanup, and must not pass for the last one.
            counts = services.retention_cleanup_counts(services.retention_cleanup_run(dry_run=True))
            self.stdout.write("Dry run: nothing deleted. Would delete:")
        else:
            with job_run("cleanup_retention", source="command") as run:
                counts = services.retention_cleanup_counts(services.retention_cleanup_run())
                run.update(counts)
            self.stdout.write("Deleted:")
        for key, count in counts.items():
            self.stdout.write(f"  {LABELS.get(key, key)}: {count}")
