from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.db.models import Q

from mlregistry.access import api_token_create

# The group `--staff` puts a user in: what the registry's write endpoints and admin pages ask for
# (mlregistry/permissions.py: staff *and* the view's permission). Deleting and pickle uploads
# are left out on purpose: a superuser grants those to a person, not to a script's token.
MAINTAINERS_GROUP = "registry maintainers"
MAINTAINER_APPS = ("mlregistry", "predictions", "quality")


def maintainers_group_ensure() -> Group:
    """The registry maintainers group with the add/change/view and promote permissions of the
    registry apps (created on first use, topped up with permissions added by later migrations)."""
    group, _ = Group.objects.get_or_create(name=MAINTAINERS_GROUP)
    perms = Permission.objects.filter(content_type__app_label__in=MAINTAINER_APPS).filter(
        Q(codename__startswith="add_")
        | Q(codename__startswith="change_")
        | Q(codename__startswith="view_")
        | Q(codename="promote_modelversion")
    )
    group.permissions.add(*perms)
    return group


class Command(BaseCommand):
    help = (
        "Creates an API token for USERNAME (creating a plain, non-staff client user if missing; "
        "with --staff, a staff user in the 'registry maintainers' group, who may upload, "
        "promote and roll back). The token is printed alone on the last line; only its hash "
        "is stored."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument(
            "--expires-in-days", type=int, default=None, help="default: never expires"
        )
        parser.add_argument(
            "--staff",
            action="store_true",
            help=(
                "make USERNAME a staff user in the 'registry maintainers' group (registry "
                "writes: register, upload, promote, roll back; not delete, not pickle uploads)"
            ),
        )

    def handle(self, *args, username: str, expires_in_days: int | None, staff: bool, **options):
        if expires_in_days is not None and expires_in_days <= 0:
            raise CommandError("--expires-in-days must be a positive number of days")
        user_model = get_user_model()
        with transaction.atomic():
            user, created = user_model.objects.get_or_create(username=username)
            if created:
                user.set_unusable_password()
                user.save(update_fields=["password"])
            if staff:
                if not user.is_staff:
                    user.is_staff = True
                    user.save(update_fields=["is_staff"])
                user.groups.add(maintainers_group_ensure())
            expiry = timedelta(days=expires_in_days) if expires_in_days else None
            instance, token = api_token_create(
                user=user, expiry=expiry, actor="manage.py create_api_token"
            )
        if created:
            kind = f"staff, in {MAINTAINERS_GROUP!r}" if staff else "not staff"
            self.stderr.write(f"Created API user {username!r} (no password, {kind}).")
        elif staff:
            self.stderr.write(f"{username!r} is staff, in {MAINTAINERS_GROUP!r}.")
        when = instance.expiry.isoformat() if instance.expiry else "never"
        self.stderr.write(f"Token for {username!r} (expires: {when}). It is shown once:")
        self.stdout.write(token)
