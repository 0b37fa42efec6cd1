from django.core.management.base import BaseCommand, CommandError

from backups import selectors, services
from config.errors import DomainError


class Command(BaseCommand):
    help = (
        "Re-reads every checksum of a backup (by id or folder; the newest when none is named). "
        "Exits non-zero on any mismatch."
    )

    def add_arguments(self, parser):
        parser.add_argument("backup", nargs="?", help="Backup id, folder or manifest.json path.")

    def handle(self, *args, **options):
        try:
            if options["backup"]:
                backup, directory = services.backup_resolve(options["backup"])
            else:
                if not services.database_has_schema():
                    raise CommandError(
                        "The database has no tables, so no backup catalogue: name a backup "
                        "folder (restore_backup PATH --yes brings a database back from one)."
                    )
                backup = selectors.backup_newest()
                if backup is None:
                    raise CommandError("There is no backup to verify.")
                directory = services.backup_location(backup)
            manifest = services.backup_verify(backup=backup, path=directory)
        except services.BackupCorrupt as exc:
            for problem in exc.problems:
                self.stderr.write(f"  {problem}")
            raise CommandError(exc.message) from None
        except DomainError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(
            f"OK {directory}: {len(manifest['files'])} files and "
            f"{len(manifest['artifacts'])} artifacts match the manifest."
        )
