"""Keeps the predict path's token cache honest: revocations and user changes drop entries.

These are cache invalidations, not business writes, so a receiver is the right tool here:
knox and the admin delete tokens and change users without calling our services.

The registry's own events (mlregistry.hooks) are received here too: the registry does not
import this app.
"""

from __future__ import annotations

from functools import partial

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from knox.models import AuthToken

from mlregistry.hooks import online_metrics_provider_register, version_leaving_service
from mlregistry.models import ModelVersion
from predictions.auth import auth_cache_forget_tokens
from predictions.selectors import online_metrics_get
from predictions.services import traffic_split_end_for_archived


def _forget_now_and_on_commit(digests: list[str]) -> None:
    # Now, and again once the change commits: a request authenticating in between still reads
    # the row as it was (the token there, the user active) and would cache it again for
    # PREDICTION_AUTH_CACHE_SECONDS.
    auth_cache_forget_tokens(digests)
    if digests:
        transaction.on_commit(partial(auth_cache_forget_tokens, digests))


@receiver(post_delete, sender=AuthToken, dispatch_uid="predictions-token-revoked")
def _token_deleted(sender, instance: AuthToken, **kwargs) -> None:
    _forget_now_and_on_commit([instance.digest])


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="predictions-user-changed")
def _user_changed(sender, instance, created: bool, **kwargs) -> None:
    if not created:
        digests = list(AuthToken.objects.filter(user=instance).values_list("digest", flat=True))
        _forget_now_and_on_commit(digests)


@receiver(version_leaving_service, sender=ModelVersion, dispatch_uid="predictions-split-ends")
def _version_leaving_service(sender, version: ModelVersion, **kwargs) -> None:
    traffic_split_end_for_archived(version=version)


online_metrics_provider_register(online_metrics_get)
