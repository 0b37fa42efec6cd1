"""The `data` of the registry's own events, rendered by the API's output serializers so a
subscriber reads the same fields as a client of GET .../versions/{v}/."""

from __future__ import annotations

from typing import Any

from mlregistry.models import ModelVersion, StageTransition


def version_event_data(
    version: ModelVersion, transition: StageTransition | None = None
) -> dict[str, Any]:
    """The version body of the API; with `transition`, plus "transition": {from_stage,
    to_stage, actor, comment, created_at}."""
    from mlregistry.serializers import ModelVersionOutput, StageTransitionOutput

    data = dict(ModelVersionOutput(version).data)
    if transition is not None:
        data["transition"] = dict(StageTransitionOutput(transition).data)
    return data
