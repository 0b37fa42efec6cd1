from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from config.errors import DomainError
from mlregistry.mlflow_registry import mlflow_path_import


def command_actor(username: str | None, default: str):
    """The user named by --user (whose permissions apply, e.g. upload_pickle), or `default`,
    a job name with no permissions."""
    if not username:
        return default
    user = get_user_model().objects.filter(username=username, is_active=True).first()
    if user is None:
        raise CommandError(f"No active user {username!r}.")
    return user


class Command(BaseCommand):
    help = (
        "Registers an MLflow model (a folder, .zip or .tar.gz written by "
        "mlflow.sklearn.save_model / log_model) as the next version of NAME, creating NAME "
        "when missing. A cloudpickle/pickle model needs --user of someone with the "
        "mlregistry.upload_pickle permission."
    )

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path)
        parser.add_argument("--name", required=True, help="the registered model's name here")
        parser.add_argument("--user", help="act as this user (their permissions apply)")

    def handle(self, *args, path: Path, name: str, user: str | None, **options):
        actor = command_actor(user, "manage.py import_mlflow_model")
        try:
            version = mlflow_path_import(path=path, name=name, actor=actor)
        except DomainError as exc:
            raise CommandError(f"Refused: {exc.full_message()}") from None
        mlflow = version.metadata.get("mlflow", {})
        self.stdout.write(
            f"Registered {version} ({version.artifact_format}, sha256 "
            f"{version.artifact_sha256[:12]}…, {len(version.input_schema)} features"
            f"{', run ' + mlflow['run_id'] if mlflow.get('run_id') else ''})."
        )
