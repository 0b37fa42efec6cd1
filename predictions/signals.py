"""Keeps the predict path's token cache honest: revocations and user changes drop entries.

These are cache invalidations, not business writes, so a receiver is the right tool here:
knox and the admin delete tokens and change users without calling our services.
"""

from __future__ import annotations

from django.conf import settings
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from knox.models import AuthToken

from predictions.auth import auth_cache_forget_tokens


@receiver(post_delete, sender=AuthToken, dispatch_uid="predictions-token-revoked")
def _token_deleted(sender, instance: AuthToken, **kwargs) -> None:
    auth_cache_forget_tokens([instance.digest])


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="predictions-user-changed")
def _user_changed(sender, instance, created: bool, **kwargs) -> None:
    if not created:
        digests = list(AuthToken.objects.filter(user=instance).values_list("digest", flat=True))
        auth_cache_forget_tokens(digests)
