from django.apps import AppConfig


class MlregistryConfig(AppConfig):
    name = "mlregistry"
    verbose_name = "Model registry"

    def ready(self) -> None:
        # issue 6: connects the signals that keep cached access policies fresh.
        from mlregistry import access  # noqa: F401
