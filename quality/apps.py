from django.apps import AppConfig


class QualityConfig(AppConfig):
    name = "quality"
    verbose_name = "Model quality"

    def ready(self) -> None:
        from config.job_heartbeats import StalledJobKind, stalled_job_kind_register
        from quality import retention
        from quality.training import training_job_finished_publish

        retention.register()

        # A job whose worker died would otherwise say "running" for ever.
        stalled_job_kind_register(
            StalledJobKind(
                name="training",
                model="quality.TrainingJob",
                extra={"error_type": "worker_lost"},
                on_failed=training_job_finished_publish,
            )
        )
