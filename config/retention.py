"""The retention registry: each app registers the prune functions of the data it owns (in
its `retention.py`, imported by its AppConfig.ready), and the hourly cleanup job
(backups.services.retention_cleanup_run) runs them all. The registry knows no app.

A prune is called as `prune(now=..., dry_run=..., actor=...)` and returns how many it
deleted (an int) or what (a list of ids or names); with `dry_run` it deletes nothing and
returns what it would delete. `actor` is the named job deleting ("job:retention", "manage.py"),
to be audited where rows go.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

PruneResult = int | list[Any]


@dataclass(frozen=True)
class Prune:
    key: str  # the summary key: "prediction_logs_pruned", "artifacts_swept", ...
    function: Callable[..., PruneResult]
    label: str  # what it deletes, for people: "prediction logs"
    # Lower runs first: rows before the files they reference, so a sweep sees the deletions.
    order: int = 100


_PRUNES: dict[str, Prune] = {}


def prune_register(
    key: str, function: Callable[..., PruneResult], *, label: str, order: int = 100
) -> None:
    """Registers (or, by the same key, replaces: ready() may run twice) one prune."""
    _PRUNES[key] = Prune(key=key, function=function, label=label, order=order)


def prunes() -> list[Prune]:
    """The registered prunes in the order they run."""
    return sorted(_PRUNES.values(), key=lambda prune: (prune.order, prune.key))


def prunes_run(*, now: datetime, dry_run: bool, actor: str) -> dict[str, PruneResult]:
    """Runs every registered prune; returns {key: result}. A prune that raises stops the run
    (the job records the failure and the next run starts over: every prune is idempotent)."""
    return {prune.key: prune.function(now=now, dry_run=dry_run, actor=actor) for prune in prunes()}


# --- the artifact store's namespaces ------------------------------------------------------


@dataclass(frozen=True)
class StoreNamespace:
    prefix: str  # "sha256/", "datasets/": a folder of the artifact storage
    # Of the names given, those a row still references (files the sweep must keep).
    referenced: Callable[[list[str]], set[str]]


_NAMESPACES: dict[str, StoreNamespace] = {}


def store_namespace_register(prefix: str, referenced: Callable[[list[str]], set[str]]) -> None:
    """Lets the artifact sweep delete files under `prefix` that `referenced` does not name.
    Files under any other prefix (parked uploads, batch-job files) are never swept: their
    owners prune them."""
    _NAMESPACES[prefix] = StoreNamespace(prefix=prefix, referenced=referenced)


def store_namespaces() -> list[StoreNamespace]:
    return [_NAMESPACES[prefix] for prefix in sorted(_NAMESPACES)]
