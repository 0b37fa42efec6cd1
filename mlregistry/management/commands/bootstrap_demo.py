import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from mlregistry.demo import demo_model_ensure


class Command(BaseCommand):
    help = (
        "Sets up a local demo: an admin user (DJANGO_SUPERUSER_USERNAME/PASSWORD, or admin with a "
        "generated password), the iris demo model in production, and a client API token."
    )

    def handle(self, *args, **options):
        user_model = get_user_model()
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME", "admin")
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD")
        admin = user_model.objects.filter(username=username).first()
        if admin is None:
            password = password or secrets.token_urlsafe(12)
            admin = user_model.objects.create_superuser(
                username=username,
                email=os.environ.get("DJANGO_SUPERUSER_EMAIL", ""),
                password=password,
            )
            self.stdout.write(f"ADMIN_USER={username}")
            self.stdout.write(f"ADMIN_PASSWORD={password}")
        else:
            self.stdout.write(f"ADMIN_USER={username}")
            self.stdout.write("ADMIN_PASSWORD=(unchanged; the user already existed)")
        version = demo_model_ensure(actor=admin)
        self.stdout.write(f"DEMO_MODEL={version.model.name} v{version.version} ({version.stage})")
