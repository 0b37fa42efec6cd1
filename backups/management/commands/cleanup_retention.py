from django.core.management.base import BaseCommand

from backups import services
from backups.jobs import job_run


class Command(BaseCommand):
    help = (
        "Deletes backups past BACKUP_RETENTION_DAYS (never the newest verified one), prunes "
        "old prediction logs and sweeps artifact files no model version references."
    )

    def handle(self, *args, **options):
        with job_run("cleanup_retention", source="command"):
            summary = services.retention_cleanup_run()
        pruned = summary["prediction_logs_pruned"]
        self.stdout.write(
            f"Backups deleted: {len(summary['backups_deleted'])}; prediction logs pruned: "
            f"{'unavailable' if pruned is None else pruned}; artifact files swept: "
            f"{len(summary['artifacts_swept'])}"
        )
