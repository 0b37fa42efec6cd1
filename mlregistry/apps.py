from django.apps import AppConfig


class MlregistryConfig(AppConfig):
    name = "mlregistry"
    verbose_name = "Model registry"
