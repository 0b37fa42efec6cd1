from django.core.management.base import BaseCommand

from backups import services
from backups.jobs import job_run


class Command(BaseCommand):
    help = (
        "Fails running jobs (backups, training jobs, every kind registered in "
        "config.job_heartbeats) whose heartbeat stopped more than JOB_STALLED_AFTER_SECONDS "
        "ago: their worker is gone. What the every-minute beat job does. --dry-run only lists."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--dry-run", action="store_true", help="List the stalled jobs; change nothing."
        )

    def handle(self, *args, **options):
        if options["dry_run"]:
            reaped = services.stalled_jobs_reap(actor="manage.py", dry_run=True)
            self.stdout.write("Dry run: nothing changed. Stalled:")
        else:
            with job_run("reap_stalled_jobs", source="command") as run:
                reaped = services.stalled_jobs_reap(actor="manage.py")
                run.update({kind: len(ids) for kind, ids in reaped.items()})
            self.stdout.write("Failed:")
        for kind, ids in reaped.items():
            shown = ", ".join(f"#{pk}" for pk in ids) or "none"
            self.stdout.write(f"  {kind}: {shown}")
