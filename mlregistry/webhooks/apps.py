"""Called from mlregistry's AppConfig.ready()."""

from __future__ import annotations


def webhooks_ready() -> None:
    from config.events import event_published
    from config.health import READINESS_CHECKS
    from mlregistry.webhooks.health import webhooks_readiness_check
    from mlregistry.webhooks.services import deliveries_create_for_event

    event_published.connect(
        deliveries_create_for_event, weak=False, dispatch_uid="mlregistry-webhooks-deliveries"
    )
    READINESS_CHECKS["webhooks"] = webhooks_readiness_check
