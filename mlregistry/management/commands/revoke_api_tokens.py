from django.core.management.base import BaseCommand, CommandError
from knox.models import AuthToken

from mlregistry.access import api_tokens_revoke


class Command(BaseCommand):
    help = (
        "Revokes API tokens: by token key (the first characters the admin lists) or every token "
        "of --user. A revoked token is refused at once, on the predict path too."
    )

    def add_arguments(self, parser):
        parser.add_argument("token_keys", nargs="*", metavar="TOKEN_KEY")
        parser.add_argument("--user", help="Revoke every token of this user.")

    def handle(self, *args, token_keys: list[str], user: str | None, **options):
        if not token_keys and not user:
            raise CommandError("Name token keys or --user USERNAME.")
        tokens = AuthToken.objects.select_related("user")
        if user:
            tokens = tokens.filter(user__username=user)
        if token_keys:
            tokens = tokens.filter(token_key__in=token_keys)
        tokens = list(tokens)
        if not tokens:
            raise CommandError("No token matches. Nothing changed.")
        count = api_tokens_revoke(tokens=tokens, actor="manage.py")
        self.stdout.write(f"Revoked {count} token(s).")
