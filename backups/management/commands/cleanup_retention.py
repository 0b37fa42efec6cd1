from django.core.management.base import BaseCommand

from backups import services
from backups.jobs import job_run
from config.retention import prunes


class Command(BaseCommand):
    help = (
        "Runs every retention prune the apps register: backups past BACKUP_RETENTION_DAYS "
        "(never the newest verified one), prediction logs, job runs and drift reports past "
        "their retention, expired API tokens, unreferenced artifact files and stale parked "
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
                counts = services.retention_cleanup_counts(
                    services.retention_cleanup_run(actor="manage.py")
                )
                run.update(counts)
            self.stdout.write("Deleted:")
        labels = {prune.key: prune.label for prune in prunes()}
        for key, count in counts.items():
            self.stdout.write(f"  {labels.get(key, key)}: {count}")
