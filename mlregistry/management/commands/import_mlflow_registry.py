from django.core.management.base import BaseCommand, CommandError

from mlregistry.management.commands.import_mlflow_model import command_actor
from mlregistry.mlflow_registry import (
    MlflowRegistryError,
    TrackingServer,
    mlflow_registry_import,
)

_COLUMNS = ("model", "version", "MLflow stage", "stage here", "result")


class Command(BaseCommand):
    help = (
        "Copies registered models from an MLflow tracking server (its REST API): versions "
        "under the same numbers, descriptions, tags, aliases, stages (at most one production: "
        "the latest wins), run metrics and params, the run id as lineage. A second run adds "
        "only what is new. Prints a summary table, then what was refused and why."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tracking-uri", required=True, help="e.g. http://mlflow:5000")
        parser.add_argument(
            "--model", action="append", dest="models", metavar="NAME", help="only these models"
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="check and report; write nothing"
        )
        parser.add_argument(
            "--user",
            help="act as this user (their permissions apply: pickled models need "
            "mlregistry.upload_pickle)",
        )

    def handle(self, *args, tracking_uri, models, dry_run, user, **options):
        actor = command_actor(user, "manage.py import_mlflow_registry")
        server = TrackingServer(tracking_uri)
        try:
            report = mlflow_registry_import(
                server=server, actor=actor, names=models, dry_run=dry_run
            )
        except MlflowRegistryError as exc:
            raise CommandError(exc.message) from None
        finally:
            server.close()
        rows = [
            (
                r.model,
                "" if r.version is None else str(r.version),
                r.mlflow_stage,
                r.stage,
                r.result,
            )
            for r in report.rows
        ]
        widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(_COLUMNS)]
        line = "  ".join(f"{{:<{w}}}" for w in widths)
        self.stdout.write(line.format(*_COLUMNS))
        for row in rows:
            self.stdout.write(line.format(*row))
        counts = {}
        for r in report.rows:
            counts[r.result] = counts.get(r.result, 0) + 1
        summary = ", ".join(f"{n} {result}" for result, n in sorted(counts.items()))
        self.stdout.write(
            f"\n{'Dry run: nothing written. ' if dry_run else ''}{summary or 'nothing to import'}."
        )
        for note in report.notes:
            self.stdout.write(f"note: {note}")
        if report.refused:
            self.stdout.write("\nRefused:")
            for r in report.refused:
                where = f"{r.model} v{r.version}" if r.version is not None else r.model
                self.stdout.write(f"  {where}: {r.reason}")
