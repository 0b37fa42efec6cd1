import warnings

from django.apps import AppConfig


class PredictionsConfig(AppConfig):
    name = "predictions"
    verbose_name = "Predictions"

    def ready(self) -> None:
        from config.health import DEEP_CHECKS, READINESS_CHECKS
        from config.routes import top_level_routes_register
        from predictions import health, retention, signals  # noqa: F401 - connects the receivers
        from predictions.urls import predict_routes, v2_routes

        retention.register()
        from django.core import checks

        from predictions.checks import sqlite_returning_check

        checks.register(sqlite_returning_check)

        health.register(READINESS_CHECKS, DEEP_CHECKS)
        from mlregistry.selectors import routing_invalidated_hooks
        from predictions.serving.routing import routing_fallback_forget

        routing_invalidated_hooks.append(routing_fallback_forget)
        top_level_routes_register([*predict_routes("api/v1/"), *v2_routes()])
        from config.job_heartbeats import StalledJobKind, stalled_job_kind_register

        # A batch job none of whose chunk workers is alive would otherwise run for ever.
        stalled_job_kind_register(
            StalledJobKind(
                name="batch",
                model="predictions.BatchJob",
                extra={"error_type": "worker_lost"},
                next_run="Resuming it runs its unfinished chunks; finished ones are kept.",
            )
        )
        # Rows are checked against the schema by name, then passed as a float array (much
        # cheaper than a DataFrame); scikit-learn would warn on every call that the array has
        # no column names.
        warnings.filterwarnings(
            "ignore", message="X does not have valid feature names", category=UserWarning
        )
