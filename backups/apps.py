from django.apps import AppConfig


class BackupsConfig(AppConfig):
    name = "backups"
    verbose_name = "Backups"

    def ready(self) -> None:
        from prometheus_client import REGISTRY

        from backups.health import JobMetricsCollector, backup_readiness_check
        from config.health import READINESS_CHECKS

        READINESS_CHECKS["backup"] = backup_readiness_check
        if not getattr(BackupsConfig, "_collector_registered", False):
            REGISTRY.register(JobMetricsCollector())
            BackupsConfig._collector_registered = True
