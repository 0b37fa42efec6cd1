from django.apps import AppConfig


class BackupsConfig(AppConfig):
    name = "backups"
    verbose_name = "Backups"

    def ready(self) -> None:
        from backups.health import JobMetricsCollector, backup_readiness_check
        from config.health import READINESS_CHECKS
        from config.metrics import SCRAPE_TIME_REGISTRY

        READINESS_CHECKS["backup"] = backup_readiness_check
        from backups import retention

        retention.register()
        _stalled_jobs_register()
        # Read at scrape time, so /metrics shows them once whether or not it runs in
        # Prometheus' multiprocess mode.
        if not getattr(BackupsConfig, "_collector_registered", False):
            SCRAPE_TIME_REGISTRY.register(JobMetricsCollector())
            BackupsConfig._collector_registered = True


def _stalled_jobs_register() -> None:
    from backups.services import backup_failed_publish
    from config.job_heartbeats import StalledJobKind, stalled_job_kind_register

    # A slot whose row says "failed" is taken over by the next attempt of that slot.
    stalled_job_kind_register(
        StalledJobKind(name="backup", model="backups.Backup", on_failed=backup_failed_publish)
    )
