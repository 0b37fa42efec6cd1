from django.core.management.base import BaseCommand

from backups.schedules import schedules_ensure


class Command(BaseCommand):
    help = (
        "Creates the default beat schedule (config/schedules.py) in django-celery-beat's "
        "tables. Idempotent: an existing entry keeps the operator's edits."
    )

    def handle(self, *args, **options):
        created = schedules_ensure()
        for name in created:
            self.stdout.write(f"created schedule {name}")
        if not created:
            self.stdout.write("schedules already present; nothing changed")
