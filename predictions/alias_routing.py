"""Serving through an alias: which version of a routing entry an alias names.

The routing entry (predictions.selectors.routing_entry_from_db) carries `aliases`
({alias: version id}) and `latest` (the highest version that is not archived); every alias move
drops the entry on commit (mlregistry.services.model_alias_set), so the version resolved here
is never one the alias left before a committed move. An alias never points to an archived
version, so its version is always in the entry's `versions`."""

from __future__ import annotations

from typing import Any

from config.errors import NotFoundError
from mlregistry.aliases import LATEST


def alias_version_info(entry: dict[str, Any], alias: str) -> dict[str, Any]:
    """The routing info of the version `alias` (or `latest`) of the entry's model points to;
    NotFoundError (404) when the model has no such alias (or, for `latest`, no version that is
    not archived)."""
    version_id = entry["latest"] if alias == LATEST else entry["aliases"].get(alias)
    info = entry["versions"].get(version_id) if version_id is not None else None
    if info is None:
        if alias == LATEST:
            raise NotFoundError(f"Model {entry['name']!r} has no version that is not archived.")
        raise NotFoundError(f"Model {entry['name']!r} has no alias {alias[:80]!r}.")
    return info
