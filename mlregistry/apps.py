from django.apps import AppConfig


class MlregistryConfig(AppConfig):
    name = "mlregistry"
    verbose_name = "Model registry"

    def ready(self) -> None:
        from mlregistry import (
            access,  # noqa: F401  (connects the access-policy cache signals)
            retention,
        )
        from mlregistry.webhooks.apps import webhooks_ready

        retention.register()
        webhooks_ready()
