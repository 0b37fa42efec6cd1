import warnings

from django.apps import AppConfig


class PredictionsConfig(AppConfig):
    name = "predictions"
    verbose_name = "Predictions"

    def ready(self) -> None:
        from config.health import DEEP_CHECKS, READINESS_CHECKS
        from predictions import health, signals  # noqa: F401 - connects the receivers

        health.register(READINESS_CHECKS, DEEP_CHECKS)
        from config.job_heartbeats import StalledJobKind, stalled_job_kind_register

        # A batch job none of whose chunk workers is alive would otherwise run for ever.
        stalled_job_kind_register(
            StalledJobKind(
                name="batch",
                model="predictions.BatchJob",
                extra={"error_type": "worker_lost"},
            )
        )
        # Rows are checked against the schema by name, then passed as a float array (much
        # cheaper than a DataFrame); scikit-learn would warn on every call that the array has
        # no column names.
        warnings.filterwarnings(
            "ignore", message="X does not have valid feature names", category=UserWarning
        )
