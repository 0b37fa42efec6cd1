"""What readiness and the admin's dashboard say about webhooks: the ones the registry turned
off because they kept failing (a person's "inactive" is their choice and says nothing)."""

from __future__ import annotations

from typing import Any

from mlregistry.webhooks.models import Webhook


def webhooks_disabled_by_failure() -> list[Webhook]:
    """Inactive webhooks with a `disabled_reason`, by name."""
    return list(Webhook.objects.filter(active=False).exclude(disabled_reason="").order_by("name"))


def webhooks_readiness_check() -> tuple[str, Any]:
    """ "degraded" (never "down": predictions are served all the same) while a webhook is
    disabled after failing, naming each and why."""
    disabled = webhooks_disabled_by_failure()
    if not disabled:
        return "ok", None
    return "degraded", {
        "disabled_after_failing": [
            {"id": hook.pk, "name": hook.name, "reason": hook.disabled_reason} for hook in disabled
        ]
    }
