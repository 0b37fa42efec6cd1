import io
import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from mlregistry.demo import demo_model_ensure


class Command(BaseCommand):
    help = (
        "Sets up a local demo: an admin user (DJANGO_SUPERUSER_USERNAME/PASSWORD, or admin with a "
        "generated password; an existing admin's password is reset when "
        "DJANGO_SUPERUSER_PASSWORD is set) and the iris demo model in production. Prints "
        "KEY=value lines."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--prepare",
            action="store_true",
            help="migrate and create the default beat schedules first (what `make run` needs)",
        )
        parser.add_argument(
            "--client-token",
            metavar="USERNAME",
            help="also create a token for this plain API client and print it as CLIENT_TOKEN",
        )

    def handle(self, *args, prepare: bool = False, client_token: str | None = None, **options):
        # One process for every step: each `manage.py` start costs seconds of imports.
        if prepare:
            call_command("migrate", interactive=False, verbosity=0)
            call_command("setup_schedules", stdout=io.StringIO())
        user_model = get_user_model()
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME", "admin")
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD")
        admin = user_model.objects.filter(username=username).first()
        self.stdout.write(f"ADMIN_USER={username}")
        if admin is None:
            password = password or secrets.token_urlsafe(12)
            admin = user_model.objects.create_superuser(
                username=username,
                email=os.environ.get("DJANGO_SUPERUSER_EMAIL", ""),
                password=password,
            )
            self.stdout.write(f"ADMIN_PASSWORD={password}")
        elif password:
            admin.set_password(password)
            admin.save(update_fields=["password"])
            self.stdout.write("ADMIN_PASSWORD=(reset from DJANGO_SUPERUSER_PASSWORD)")
        else:
            self.stdout.write("ADMIN_PASSWORD=(unchanged; the user already existed)")
        version = demo_model_ensure(actor=admin)
        self.stdout.write(f"DEMO_MODEL={version.model.name} v{version.version} ({version.stage})")
        if client_token:
            out = io.StringIO()
            call_command("create_api_token", client_token, stdout=out, stderr=io.StringIO())
            self.stdout.write(f"CLIENT_TOKEN={out.getvalue().split()[-1]}")
