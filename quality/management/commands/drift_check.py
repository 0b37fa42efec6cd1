from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from config.errors import DomainError
from mlregistry.selectors import registered_model_get
from quality.drift import drift_check


class Command(BaseCommand):
    help = (
        "Flushes the prediction-log buffer, then compares each production version's recent "
        "served features with its reference sample and stores a drift report."
    )

    def add_arguments(self, parser):
        parser.add_argument("--model", help="only this registered model (by name)")
        parser.add_argument("--as-of", help="end of the window (ISO 8601); default now")

    def handle(self, *args, model=None, as_of=None, **options):
        try:
            target = registered_model_get(name=model) if model else None
        except DomainError as exc:
            raise CommandError(exc.message) from None
        window_end = None
        if as_of:
            window_end = parse_datetime(as_of)
            if window_end is None or window_end.tzinfo is None:
                raise CommandError("--as-of must be an ISO 8601 date-time with a time zone.")
        reports = drift_check(as_of=window_end, model=target)
        for report in reports:
            drifted = ", ".join(report.drifted_features) or "-"
            self.stdout.write(
                f"{report.version}: {report.status} (served {report.sample_size}, "
                f"reference {report.reference_size}, drifted: {drifted})"
            )
        if not reports:
            self.stdout.write("No production versions to check.")
