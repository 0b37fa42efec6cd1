"""The serving path's typed data: what a routing entry and a version's serving info hold.

Both are cached (pickled) in the shared cache, so they hold only plain values, and are marked
`cache_value` so the cache's restricted unpickler may rebuild them; both are frozen, and the
read-ahead hands one decoded instance to every request that reads the same bytes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from config.cache_serializer import cache_value


@cache_value
@dataclass(frozen=True, slots=True)
class VersionInfo:
    """What serving needs about one model version: `id` (database pk), `version` (its number),
    `stage`, `sha256` and `artifact` (storage name) and `format` (skops | pickle) of the
    artifact, and `schema` (the input schema: ordered features, as stored on the version)."""

    id: int
    version: int
    stage: str
    sha256: str
    artifact: str
    format: str
    schema: list[dict[str, Any]]

    @property
    def feature_order(self) -> tuple[str, ...]:
        return tuple(feature["name"] for feature in self.schema)


@cache_value
@dataclass(frozen=True, slots=True)
class RoutingEntry:
    """A model's routing: its non-archived versions (`versions` by id, `by_number` number ->
    id), the `production` version id (or None), the traffic `split` ((version id, weight
    in percent), ordered by version number; empty: all traffic to production), `aliases`
    (alias -> version id; an alias never points to an archived version), `latest` (the id of
    the highest version that is not archived, what the reserved alias `latest` means) and
    `generation` (the model's routing generation token when the entry was built: served from
    the cache only while it is still the current one)."""

    model_id: int
    name: str
    task: str
    production: int | None
    split: tuple[tuple[int, int], ...]
    versions: dict[int, VersionInfo]
    by_number: dict[int, int]
    aliases: dict[str, int] = field(default_factory=dict)
    latest: int | None = None
    generation: str = ""

    def version_numbered(self, number: int) -> VersionInfo | None:
        """The non-archived version with this number, or None (archived, absent, or newer
        than this entry)."""
        version_id = self.by_number.get(number)
        return self.versions[version_id] if version_id is not None else None
