"""Which registered models an authenticated caller may use, API token revocation and expiry.

The predict path calls model_access_check before anything else (including the result cache),
so a restricted client gets a 404 for a model outside its list even when a result is cached.
The answer is cached per user and dropped whenever a policy or a model it names changes, so a
steady stream of predictions costs one cache read each and no database query.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete
from django.dispatch import receiver
from django.utils import timezone
from knox.models import AuthToken

from config.cache_outage import guarded_delete_many, guarded_get, guarded_set, memo_put
from config.errors import NotFoundError
from config.pruning import delete_in_batches
from config.readahead import (
    MISSING,
    ORDER_ACCESS_POLICY,
    ReadAheadPlan,
    readahead_register,
    readahead_take,
)
from mlregistry.audit import Actor, audit_record, prune_auditor
from mlregistry.models import ApiClientPolicy, RegisteredModel

logger = logging.getLogger(__name__)

_UNRESTRICTED = "*"


def access_cache_key(user_id: Any) -> str:
    return f"access:models:{user_id}"


def api_client_allowed_models(*, user: Any) -> frozenset[str] | None:
    """The model names `user` may use, or None when it is not restricted."""
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    key = access_cache_key(user.pk)
    cached = readahead_take(key)  # read with the token, in one trip (_read_ahead below)
    if cached is MISSING:
        # During a cache outage: the process's short memo, one log line per retry period.
        cached = guarded_get(key)
    else:
        memo_put(key, cached)
    # The entry names its user and its expiry (a Unix time): one copied under another user's
    # key or put back after it was dropped (config/cache_serializer.py signs values, it does
    # not bind them to keys or times), or anything else there, is a miss.
    if not (
        isinstance(cached, tuple)
        and len(cached) == 3
        and cached[0] == user.pk
        and isinstance(cached[2], float)
        and cached[2] > time.time()
    ):
        policy = ApiClientPolicy.objects.filter(user_id=user.pk).first()
        cached = (
            user.pk,
            _UNRESTRICTED
            if policy is None
            else sorted(policy.allowed_models.values_list("name", flat=True)),
            time.time() + settings.ACCESS_POLICY_CACHE_TTL,
        )
        guarded_set(key, cached, settings.ACCESS_POLICY_CACHE_TTL)
    allowed = cached[1]
    return None if allowed == _UNRESTRICTED else frozenset(allowed)


def _read_ahead(plan: ReadAheadPlan) -> None:
    # Only ever read here (a new answer is written whole), so one decoded value may be shared.
    if plan.user_pk is not None:
        plan.read(access_cache_key(plan.user_pk), shared=True)


readahead_register("access_policy", _read_ahead, order=ORDER_ACCESS_POLICY)


def model_access_check(*, user: Any, model_name: str) -> None:
    """Raises NotFoundError when `user` may not use `model_name`: the same answer as for a model
    that does not exist, so a restricted client learns nothing about the others."""
    allowed = api_client_allowed_models(user=user)
    if allowed is not None and model_name not in allowed:
        raise NotFoundError(f"No registered model named {model_name!r}.")


def access_policy_invalidate(*, user_ids: Iterable[Any]) -> None:
    """Forgets the cached answers for these users; their next request reads the database."""
    keys = [access_cache_key(user_id) for user_id in set(user_ids)]
    if keys:
        # Guarded: the change is committed, so a cache outage must not turn it into a 503,
        # and the delete is sent again once the cache is back.
        guarded_delete_many(keys)


def _invalidate_on_commit(user_ids: Iterable[Any]) -> None:
    transaction.on_commit(partial(access_policy_invalidate, user_ids=list(user_ids)))


# Signals rather than service calls: a policy is edited in the admin (including its many-to-many
# field, saved after the row) or the shell, and every path must drop the cached answer.
@receiver(post_save, sender=ApiClientPolicy)
@receiver(post_delete, sender=ApiClientPolicy)
def _policy_changed(sender, instance: ApiClientPolicy, **kwargs) -> None:
    _invalidate_on_commit([instance.user_id])


@receiver(m2m_changed, sender=ApiClientPolicy.allowed_models.through)
def _policy_models_changed(sender, instance, action: str, reverse: bool, pk_set, **kwargs) -> None:
    if not action.startswith("post_"):
        return
    if reverse:  # instance is a RegisteredModel; pk_set holds policy ids (None on clear)
        policies = ApiClientPolicy.objects.filter(pk__in=pk_set) if pk_set else None
        if policies is None:
            return
        _invalidate_on_commit(policies.values_list("user_id", flat=True))
    else:
        _invalidate_on_commit([instance.user_id])


@receiver(post_save, sender=RegisteredModel)
@receiver(pre_delete, sender=RegisteredModel)
def _model_changed(sender, instance: RegisteredModel, **kwargs) -> None:
    # A rename or a delete changes the names cached for the policies that list this model.
    if kwargs.get("created"):
        return
    user_ids = list(instance.client_policies.values_list("user_id", flat=True))
    if user_ids:
        _invalidate_on_commit(user_ids)


def user_deactivate(*, users: Iterable[Any], actor: Actor) -> int:
    """Deactivates these users; returns how many were active. From the commit on, none of
    their tokens authenticates, on the predict path's token cache too.

    Each row is saved (never `queryset.update`), so every post_save receiver hears of it: the
    token cache's receiver (predictions.signals) drops their cached authentications.
    """
    user_model = get_user_model()
    ids = [user.pk for user in users]
    with transaction.atomic():
        active = list(
            user_model._default_manager.select_for_update()
            .filter(pk__in=ids, is_active=True)
            .order_by("pk")
        )
        for user in active:
            user.is_active = False
            user.save(update_fields=["is_active"])
            audit_record(
                actor=actor, verb="deactivate", obj=user, changes={"is_active": [True, False]}
            )
    logger.info(
        "users deactivated",
        extra={
            "actor": getattr(actor, "username", str(actor)),
            "users": [user.get_username() for user in active],
        },
    )
    return len(active)


def api_token_create(
    *, user: Any, actor: Actor, expiry: timedelta | None = None
) -> tuple[AuthToken, str]:
    """Issues an API token for `user`; returns the row and the secret, which is shown once
    (knox stores only its digest). `expiry` None: the token never expires."""
    with transaction.atomic():
        instance, secret = AuthToken.objects.create(user=user, expiry=expiry)
        audit_record(
            actor=actor,
            verb="create",
            obj=instance,
            changes={
                "user": [None, user.get_username()],
                "expiry": [None, instance.expiry.isoformat() if instance.expiry else None],
            },
        )
    return instance, secret


def api_tokens_revoke(*, tokens: Iterable[AuthToken], actor: Actor) -> int:
    """Deletes these API tokens (knox keeps only their digests); returns how many went (a token
    already gone counts for nothing and leaves no audit row)."""
    tokens = list(tokens)
    with transaction.atomic():
        live = list(
            AuthToken.objects.select_for_update()
            .filter(pk__in=[t.pk for t in tokens])
            .select_related("user")
            .order_by("pk")
        )
        for token in live:
            audit_record(
                actor=actor,
                verb="revoke",
                obj=token,
                changes={"user": [token.user.get_username(), None]},
            )
        count, _ = AuthToken.objects.filter(pk__in=[t.pk for t in live]).delete()
    logger.info(
        "api tokens revoked",
        extra={
            "actor": getattr(actor, "username", str(actor)),
            "tokens": [t.token_key for t in tokens],
            "users": sorted({t.user.get_username() for t in tokens}),
        },
    )
    return count


def _policy_snapshot(policy: ApiClientPolicy | None) -> dict[str, Any]:
    if policy is None:
        return {}
    return {
        "allowed_models": sorted(policy.allowed_models.values_list("name", flat=True)),
        "note": policy.note,
    }


def api_client_policy_save(
    *, user: Any, allowed_models: Iterable[RegisteredModel], actor: Actor, note: str = ""
) -> ApiClientPolicy:
    """Creates or replaces `user`'s client policy: from the commit on, the client may use only
    `allowed_models` (an empty list: none). A save that changes nothing writes nothing."""
    with transaction.atomic():
        policy = ApiClientPolicy.objects.select_for_update().filter(user=user).first()
        before = _policy_snapshot(policy)
        created = policy is None
        if created:
            policy = ApiClientPolicy(user=user)
        policy.note = note
        policy.save()
        policy.allowed_models.set(list(allowed_models))
        after = _policy_snapshot(policy)
        changes = {
            name: [before.get(name), after[name]]
            for name in after
            if before.get(name) != after[name] or created
        }
        if changes:
            audit_record(
                actor=actor, verb="create" if created else "update", obj=policy, changes=changes
            )
    return policy


def api_client_policy_delete(*, policy: ApiClientPolicy, actor: Actor) -> None:
    """Removes a client's policy: from the commit on, it may use every model again."""
    with transaction.atomic():
        locked = ApiClientPolicy.objects.select_for_update().filter(pk=policy.pk).first()
        if locked is None:
            return
        audit_record(
            actor=actor,
            verb="delete",
            obj=locked,
            changes={name: [value, None] for name, value in _policy_snapshot(locked).items()},
        )
        locked.delete()


def api_tokens_prune_expired(
    *,
    now: datetime | None = None,
    batch_size: int = 1000,
    dry_run: bool = False,
    actor: Actor = "job:retention",
) -> int:
    """Deletes API tokens whose expiry has passed (they authenticate nobody), in batches
    audited as `actor`; returns how many went (with `dry_run`, how many would, deleting
    nothing).

    The deletes go through the ORM, so predictions' post_delete receiver drops each token's
    cached authentication as a revocation does.
    """
    expired = AuthToken.objects.filter(expiry__lt=now or timezone.now())
    if dry_run:
        return expired.count()
    return delete_in_batches(expired, batch_size=batch_size, audit=prune_auditor(actor))
