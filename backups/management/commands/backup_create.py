from django.core.management.base import BaseCommand, CommandError

from backups import services
from backups.jobs import job_run
from config.errors import DomainError


class Command(BaseCommand):
    help = "Writes and verifies a backup now (database dump + artifacts archive + manifest)."

    def add_arguments(self, parser):
        parser.add_argument("--slot", help="Idempotency key: a slot already backed up is reused.")

    def handle(self, *args, **options):
        if not services.database_has_schema():
            # Before job_run: there is no table to record the run in either.
            raise CommandError(
                "The database has no tables: nothing to back up (run migrate, or "
                "restore_backup PATH --yes to bring one back)."
            )
        try:
            with job_run("backup", source="command"):
                backup = services.backup_create(slot=options["slot"], actor="manage.py")
        except DomainError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(
            f"Backup {backup.pk} {backup.status}: {services.backup_location(backup)} "
            f"({backup.total_size} bytes, {backup.artifact_count} artifacts)"
        )
