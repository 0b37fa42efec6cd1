import time

from django.core.cache import cache
from django.core.management.base import BaseCommand, CommandError

from config.metrics import WORKER_HEARTBEAT_CACHE_KEY


class Command(BaseCommand):
    help = (
        "Exits non-zero when no Celery worker has run the beat's heartbeat task for --max-age "
        "seconds: a container health check for beat and worker."
    )

    def add_arguments(self, parser):
        parser.add_argument("--max-age", type=int, default=180)

    def handle(self, *args, max_age: int, **options):
        stamp = cache.get(WORKER_HEARTBEAT_CACHE_KEY)
        if stamp is None:
            raise CommandError("No worker heartbeat recorded yet.")
        age = time.time() - float(stamp)
        if age > max_age:
            raise CommandError(f"Last worker heartbeat was {age:.0f}s ago (limit {max_age}s).")
        self.stdout.write(f"Worker heartbeat {age:.0f}s ago.")
