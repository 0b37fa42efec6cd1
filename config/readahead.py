"""Cache reads and counter increments made ahead, in one round trip, for the request this
thread is serving: a registry of the keys each owner needs, and the store of their answers.

A predict request needs several small things from the shared cache: the token's user, the
caller's access policy, its throttle counter, the model's routing entry and (when it can be
guessed) the cached result. Asked one by one they cost a Redis round trip each, and on a busy
machine every round trip is a context switch: that was most of a predict request's time.

So each owner registers a provider (`readahead_register`): a function that, given the request
being planned (`ReadAheadPlan`), names the keys it will read (`plan.read`) and the counters it
will increment (`plan.increment`). The serving seam (predictions.serving) runs every provider
in order, fetches all of it in one pipeline, and parks the answers here; each owner then takes
its own answer (`readahead_take`, `readahead_count`) or, when nothing was read ahead for it,
asks the cache itself as before. Nothing here decides anything: a value read ahead is exactly
what the owner would have read.

The registry lives in `config` (the layer every app may import) so that owners outside the
predictions app (the throttle here, mlregistry's access policy) can register without importing
it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

MISSING: Any = object()  # "not read ahead": the caller must ask the cache itself

# Provider order: the token's provider learns whose request it is, which later ones need.
ORDER_AUTHENTICATION = 10
ORDER_ACCESS_POLICY = 20
ORDER_THROTTLE = 30
ORDER_ROUTING = 40
ORDER_RESULT = 50


class ReadAheadPlan:
    """What one request reads ahead, filled in by the registered providers in order.

    Set by the seam: `request` and `view` (DRF's), `target` (the serving target, with
    `model_name`, or None), `body` (a callable giving the request body for a guess, or None
    when it cannot be read yet). Set by providers: `user_pk` (the user the request's token
    belonged to when this process last verified it, or None)."""

    __slots__ = ("body", "increments", "keys", "request", "shared", "target", "user_pk", "view")

    def __init__(
        self, *, request: Any, view: Any, target: Any = None, body: Callable | None = None
    ) -> None:
        self.request = request
        self.view = view
        self.target = target
        self.body = body
        self.user_pk: int | None = None
        self.keys: list[str] = []
        self.shared: set[str] = set()
        self.increments: list[tuple[str, int]] = []

    def read(self, key: str, *, shared: bool = False) -> None:
        """Reads `key` ahead. `shared`: its owner only reads the value (never changes it), so
        one decoded object may be handed to every request that reads the same bytes."""
        self.keys.append(key)
        if shared:
            self.shared.add(key)

    def increment(self, key: str, window: int) -> None:
        """Increments the counter `key` ahead, creating it to live `window` + 1 seconds."""
        self.increments.append((key, window))


Provider = Callable[[ReadAheadPlan], None]
# Called when the request's credentials are refused after reading ahead for their user.
RefusalHook = Callable[[ReadAheadPlan], None]

_providers: dict[str, tuple[int, Provider, RefusalHook | None]] = {}
_ordered: list[tuple[int, Provider, RefusalHook | None]] = []


def readahead_register(
    name: str, provider: Provider, *, order: int, on_refused: RefusalHook | None = None
) -> None:
    """Registers (or replaces) the provider `name`. Providers run by ascending `order`.
    `on_refused(plan)` undoes what reading ahead did for a request whose token was then
    refused (a counter incremented for a user it turned out not to be)."""
    _providers[name] = (order, provider, on_refused)
    _ordered[:] = sorted(_providers.values(), key=lambda item: item[0])


def readahead_unregister(name: str) -> None:
    """Removes the provider `name`, if registered (tests)."""
    _providers.pop(name, None)
    _ordered[:] = sorted(_providers.values(), key=lambda item: item[0])


def readahead_providers() -> list[str]:
    """The registered providers' names, in the order they run."""
    return [name for name, _ in sorted(_providers.items(), key=lambda item: item[1][0])]


def readahead_plan(plan: ReadAheadPlan) -> ReadAheadPlan:
    """Runs every provider on `plan`; returns it."""
    for _, provider, _ in _ordered:
        provider(plan)
    return plan


def readahead_refused(plan: ReadAheadPlan) -> None:
    """Tells every provider that the plan's credentials were refused."""
    for _, _, on_refused in _ordered:
        if on_refused is not None:
            on_refused(plan)


_local = threading.local()


def readahead_set(values: dict[str, Any], counts: dict[str, int] | None = None) -> None:
    """Parks `values` (key -> value, None for a cache miss) and incremented `counts`."""
    _local.values = values
    _local.counts = counts or {}


def readahead_clear() -> None:
    _local.values = None
    _local.counts = None


def readahead_take(key: str) -> Any:
    """The value read ahead for `key` (None: it was not in the cache), once; else MISSING."""
    values = getattr(_local, "values", None)
    if values and key in values:
        return values.pop(key)
    return MISSING


def readahead_count(key: str) -> int | None:
    """The counter value after the increment made ahead for `key`, once; else None."""
    counts = getattr(_local, "counts", None)
    if counts and key in counts:
        return counts.pop(key)
    return None


def readahead_counted(key: str) -> bool:
    """Whether an increment of `key` was made ahead and not yet taken."""
    counts = getattr(_local, "counts", None)
    return bool(counts) and key in counts
