from django.apps import AppConfig


class MlregistryConfig(AppConfig):
    name = "mlregistry"
    verbose_name = "Model registry"

    def ready(self) -> None:
        # Connects the signals that keep cached access policies fresh.
        from mlregistry import access  # noqa: F401
