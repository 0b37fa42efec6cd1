from django.apps import AppConfig


class MlregistryConfig(AppConfig):
    name = "mlregistry"
    verbose_name = "Model registry"

    def ready(self) -> None:
        from config.job_heartbeats import StalledJobKind, stalled_job_kind_register
        from mlregistry import access  # noqa: F401  (connects the access-policy cache signals)
        from mlregistry.webhooks.apps import webhooks_ready

        webhooks_ready()

        # A job whose worker died would otherwise say "running" for ever.
        stalled_job_kind_register(
            StalledJobKind(
                name="training",
                model="mlregistry.TrainingJob",
                extra={"error_type": "worker_lost"},
            )
        )
