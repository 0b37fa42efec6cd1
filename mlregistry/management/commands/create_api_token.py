from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from knox.models import AuthToken


class Command(BaseCommand):
    help = (
        "Creates an API token for USERNAME (creating a plain, non-staff client user if missing). "
        "The token is printed alone on the last line; only its hash is stored."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument(
            "--expires-in-days", type=int, default=None, help="default: never expires"
        )

    def handle(self, *args, username: str, expires_in_days: int | None, **options):
        if expires_in_days is not None and expires_in_days <= 0:
            raise CommandError("--expires-in-days must be a positive number of days")
        user_model = get_user_model()
        user, created = user_model.objects.get_or_create(username=username)
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
            self.stderr.write(f"Created API client user {username!r} (no password, not staff).")
        expiry = timedelta(days=expires_in_days) if expires_in_days else None
        instance, token = AuthToken.objects.create(user=user, expiry=expiry)
        when = instance.expiry.isoformat() if instance.expiry else "never"
        self.stderr.write(f"Token for {username!r} (expires: {when}). It is shown once:")
        self.stdout.write(token)
