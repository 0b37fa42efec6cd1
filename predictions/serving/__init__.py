"""The serving seam: every predict request (native, MLflow scoring, Open Inference V2) goes
through here, and the speed machinery that bends the framework stays inside.

How a request flows
-------------------
1. `ServingView.initial` builds a `ReadAheadPlan` (config/readahead.py). Each owner of a cache
   key has registered a provider there: authentication (predictions/auth.py: the token's entry,
   and whose request it is), the access policy (mlregistry/access.py), the throttle
   (config/throttling.py: an INCR of the caller's window counter), routing (routing.py: the
   model's `RoutingEntry`) and the result cache (core.py: the result key guessed from the
   version this target last answered by). The plan is fetched in one Redis round trip
   (`RedisPipeline`, pipeline.py) and the answers parked for the owners, who each take their
   own; then DRF authenticates, checks permissions and throttles as usual.
2. The view decodes the body (`ServingView.decode`: native JSON in predictions/body.py, a
   protocol's frame in predictions/protocols/) and calls `serve` (core.py) with a `Target`:
   access check, routing entry, the target's version, validation (typed fast path or the
   field-by-field one), the result cache or the model, the non-finite check, metrics and the
   prediction log. It returns `Served`: labels and probabilities as arrays, and the native
   JSON on demand (`Served.native()`).
3. The view renders: the native answer, MLflow's `{"predictions": [...]}`, or V2 tensors.

Adding a target (for example an alias: POST /models/{name}/aliases/{alias}/predict)
----------------------------------------------------------------------------------------
1. Add what the target needs to `RoutingEntry` (types.py) and fill it in
   `routing_entry_from_db` (routing.py), e.g. `aliases: dict[str, int]` (alias -> version id);
   every change to it must already call `mlregistry.selectors.routing_invalidate` on commit.
2. Add a frozen dataclass `Target` subclass in routing.py with `model_name` and the target's
   own fields, implementing `likely(entry)` (the version, from the entry alone, or None) and
   `choose(entry, user=, client_id=)` (the version, or NotFoundError when the alias is
   unknown); export it here.
3. Give the view `target(**kwargs)` returning it (a `ServingView` subclass: parse, serve,
   render), and the same for the protocols' views if they serve that URL too. Read-ahead,
   result guesses, cache keys, logging and metrics need nothing more.

Public surface (nothing outside this package imports its other names)
---------------------------------------------------------------------
Serving: `serve`, `Served`, `ModelOutputInvalid`, `non_finite_rows`, `ServingView`; for
other ways of scoring on the same loaded models (batch jobs): `predict_arrays`,
`rows_without_answer`.
Targets: `Target`, `ProductionTarget`, `VersionTarget`, `AliasTarget`.
Routing: `RoutingEntry`, `VersionInfo`, `version_info`, `routing_entry_get`,
`routing_entry_from_db`, `routing_fallback_clear`, `result_cache_key`.
Machinery, for tests and operations: `RedisPipeline`, `CommandBatch`, `WriteBehind`,
`write_behind_use`, `cache_writes_flush`, `pinned_connection`, `SharedDecodes`.
"""

from predictions.serving.core import (
    ModelOutputInvalid,
    Served,
    non_finite_rows,
    predict_arrays,
    result_cache_key,
    rows_without_answer,
    serve,
)
from predictions.serving.pipeline import CommandBatch, RedisPipeline
from predictions.serving.readahead import (
    SharedDecodes,
    WriteBehind,
    cache_writes_flush,
    pinned_connection,
    write_behind_use,
)
from predictions.serving.routing import (
    AliasTarget,
    ProductionTarget,
    Target,
    VersionTarget,
    routing_entry_from_db,
    routing_entry_get,
    routing_fallback_clear,
    version_info,
)
from predictions.serving.types import RoutingEntry, VersionInfo
from predictions.serving.views import ServingView

__all__ = [
    "AliasTarget",
    "CommandBatch",
    "ModelOutputInvalid",
    "ProductionTarget",
    "RedisPipeline",
    "RoutingEntry",
    "Served",
    "ServingView",
    "SharedDecodes",
    "Target",
    "VersionInfo",
    "VersionTarget",
    "WriteBehind",
    "cache_writes_flush",
    "non_finite_rows",
    "pinned_connection",
    "predict_arrays",
    "result_cache_key",
    "routing_entry_from_db",
    "routing_entry_get",
    "routing_fallback_clear",
    "rows_without_answer",
    "serve",
    "version_info",
    "write_behind_use",
]
