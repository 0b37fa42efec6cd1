from django.core.management.base import BaseCommand, CommandError

from backups import services
from backups.jobs import job_run
from config.errors import DomainError


class Command(BaseCommand):
    help = (
        "Restores the database and the artifacts store from a backup (id or folder). "
        "Verifies it first; only says what it would replace unless --yes is given."
    )

    def add_arguments(self, parser):
        parser.add_argument("backup", help="Backup id, folder or manifest.json path.")
        parser.add_argument("--yes", action="store_true", help="Really replace the data.")

    def handle(self, *args, **options):
        try:
            backup, directory = services.backup_resolve(options["backup"])
            plan = services.restore_plan(directory=directory, backup=backup)
            for line in plan.describe():
                self.stdout.write(line)
            if not options["yes"]:
                if not plan.database_is_empty:
                    self.stdout.write(
                        "The database and the artifacts store are not empty: the rows and "
                        "files above will be replaced. Stop the web and worker processes, "
                        "then run again with --yes."
                    )
                self.stdout.write("Dry run: nothing changed (add --yes to restore).")
                return
            # The run's record lands in the restored database: it keeps a trace of the restore.
            with job_run("restore", source="command", backup=directory.name):
                result = services.backup_restore(
                    directory=directory, backup=backup, actor="manage.py"
                )
        except services.BackupCorrupt as exc:
            for problem in exc.problems:
                self.stderr.write(f"  {problem}")
            raise CommandError(f"Refusing to restore: {exc.message}") from None
        except DomainError as exc:
            raise CommandError(exc.message) from None
        for mismatch in result.mismatches:
            self.stderr.write(f"  row count differs: {mismatch}")
        self.stdout.write(f"Restored {directory.name}.")
