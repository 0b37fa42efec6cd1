"""Registry events: the one call every app makes when something a subscriber may care about
happened (a version registered, a stage changed, a backup failed, ...).

An app calls `event_publish()` inside the transaction of the change it describes; the event is
handed to the receivers of `event_published` at once (the webhooks of mlregistry.webhooks write
their deliveries in that same transaction and send them after it commits). A signal, not an
import: no app has to import the one that delivers, so none depends on another for it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.dispatch import Signal
from django.utils import timezone

# Every event type a webhook may subscribe to; `data` is the API's body of the object named.
EVENT_TYPES: tuple[str, ...] = (
    "model_version.created",  # data: the version body of GET .../versions/{v}/
    "model_version.stage_changed",  # data: the version body + "transition"
    "model_alias.set",  # data: {"model", "alias", "version", "previous_version", "actor", ...}
    "model_alias.deleted",  # data: {"model", "alias", "version", "actor", ...}
    "traffic_split.changed",  # data: the body of GET .../traffic
    "drift.detected",  # data: the drift report body of GET .../drift
    "training_job.finished",  # data: the job body of GET .../training-jobs/{id}
    "backup.failed",  # data: {"id", "slot", "status", "error", "started_at", "finished_at"}
)


@dataclass(frozen=True)
class RegistryEvent:
    """One event as subscribers receive it: `id` is unique per event, `model` names the
    registered model it concerns ("" for none), `data` is plain JSON."""

    id: str
    event: str
    created_at: datetime
    model: str
    data: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        """The body a webhook receives: {"id", "event", "created_at", "data"}."""
        return {
            "id": self.id,
            "event": self.event,
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
            "data": self.data,
        }


# Sent with `event=` a RegistryEvent, synchronously, inside the publisher's transaction.
event_published = Signal()


def event_publish(event: str, *, model: str | None = None, data: dict[str, Any]) -> RegistryEvent:
    """Announces `event` (one of EVENT_TYPES) about the registered model named `model` (None
    when it concerns none, e.g. a backup), with `data` a JSON-able object.

    Call it inside the transaction of the change: receivers act on commit only, so a change
    that rolls back announces nothing. ValueError for an unknown event type (a programming
    error, never user input)."""
    if event not in EVENT_TYPES:
        raise ValueError(f"Unknown event type {event!r}; add it to config.events.EVENT_TYPES.")
    published = RegistryEvent(
        id=str(uuid.uuid4()),
        event=event,
        created_at=timezone.now(),
        model=model or "",
        # A copy in plain JSON: what is sent is what the object was now, whatever happens to
        # the caller's dict (or the row) later.
        data=json.loads(json.dumps(data, cls=DjangoJSONEncoder)),
    )
    event_published.send(sender=RegistryEvent, event=published)
    return published
