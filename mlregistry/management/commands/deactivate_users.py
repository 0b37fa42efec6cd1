from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from mlregistry.access import user_deactivate


class Command(BaseCommand):
    help = (
        "Deactivates users by name: from now on none of their API tokens or admin sessions "
        "works (the predict path's token cache is dropped too)."
    )

    def add_arguments(self, parser):
        parser.add_argument("usernames", nargs="+", metavar="USERNAME")

    def handle(self, *args, usernames: list[str], **options):
        user_model = get_user_model()
        users = list(user_model._default_manager.filter(username__in=usernames))
        missing = sorted(set(usernames) - {user.get_username() for user in users})
        if missing:
            raise CommandError(f"No such user(s): {', '.join(missing)}. Nothing changed.")
        count = user_deactivate(users=users, actor="manage.py")
        self.stdout.write(f"Deactivated {count} user(s) ({len(users) - count} already inactive).")
