from django.core.management.base import BaseCommand, CommandError

from config.errors import NotFoundError
from quality.training import retraining_schedule_run, training_job_run


class Command(BaseCommand):
    help = (
        "Runs training jobs in this process: the given job ids, or with --scheduled one run of "
        "every model's recurring job (what the retraining schedule does)."
    )

    def add_arguments(self, parser):
        parser.add_argument("job_ids", nargs="*", type=int)
        parser.add_argument("--scheduled", action="store_true", help="start the scheduled runs")

    def handle(self, *args, job_ids, scheduled, **options):
        if scheduled:
            job_ids = [*job_ids, *(job.pk for job in retraining_schedule_run())]
        if not job_ids:
            raise CommandError("Give job ids, or --scheduled.")
        for job_id in job_ids:
            try:
                job = training_job_run(job_id=job_id)
            except NotFoundError as exc:
                raise CommandError(exc.message) from None
            outcome = job.decision or job.error_type
            self.stdout.write(f"job #{job.pk}: {job.status} ({outcome}) {job.error}".rstrip())
