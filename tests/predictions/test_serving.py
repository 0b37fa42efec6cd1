"""The serving seam's public surface (predictions.serving) and the read-ahead key registry
(config/readahead.py)."""

import ast
import dataclasses
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from django.core.cache import cache
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from config import readahead
from config.errors import ConflictError, ForbiddenError, NotFoundError
from predictions.auth import auth_cache_key_for_request
from predictions.services import traffic_split_set
from predictions.serving import (
    ProductionTarget,
    RoutingEntry,
    Served,
    Target,
    VersionInfo,
    VersionTarget,
    routing_entry_get,
    serve,
)
from predictions.views import PredictView
from tests import factories
from tests.predictions.conftest import IRIS_ROW, OTHER_ROW, iris_version, promote

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


class _Body:
    """A native body as the views hand it to serve()."""

    def __new__(cls, payload):
        import orjson

        from predictions.body import PredictBody

        return PredictBody(orjson.dumps(payload))


def _serve(user, target, payload, **kwargs) -> Served:
    return serve(user=user, target=target, body=_Body(payload), request_id="r1", **kwargs)


# --- serve() and Served -------------------------------------------------------------------


def test_serve_answers_arrays_and_the_native_json_from_them(client_user, iris_production):
    served = _serve(client_user, ProductionTarget("iris"), {"instances": [IRIS_ROW, OTHER_ROW]})
    assert served.batch and not served.cached and len(served) == 2
    assert served.version.id == iris_production.pk
    assert served.probabilities.shape == (2, 3)
    assert served.class_labels == ["0", "1", "2"]
    native = served.native()
    assert native["model"] == "iris" and native["model_version"] == 1
    rows = native["predictions"]
    assert [row["prediction"] for row in rows] == served.predictions()
    assert [row["confidence"] for row in rows] == served.probabilities.max(axis=1).tolist()
    assert list(rows[0]["probabilities"]) == served.class_labels


def test_a_cached_single_row_carries_the_same_arrays(client_user, iris_production):
    first = _serve(client_user, ProductionTarget("iris"), {"features": IRIS_ROW})
    again = _serve(client_user, ProductionTarget("iris"), {"features": IRIS_ROW})
    assert again.cached and not first.cached
    assert again.predictions() == first.predictions()
    assert np.array_equal(again.probabilities, first.probabilities)
    assert again.native()["probabilities"] == first.native()["probabilities"]


def test_a_pinned_archived_version_is_for_staff_only(client_user, iris_model, iris_production):
    newer = iris_version(iris_model, c=0.01)
    promote(newer)  # v1 archived
    with pytest.raises(ForbiddenError):
        _serve(client_user, VersionTarget("iris", 1), {"features": IRIS_ROW})
    staff = factories.staff_create("seam-staff")
    assert _serve(staff, VersionTarget("iris", 1), {"features": IRIS_ROW}).version.version == 1
    assert _serve(staff, ProductionTarget("iris"), {"features": IRIS_ROW}).version.version == 2


def test_a_model_without_production_has_no_candidates_and_conflicts(client_user, iris_model):
    iris_version(iris_model)
    entry = routing_entry_get(name="iris")
    assert ProductionTarget("iris").candidates(entry, user=client_user) == ()
    with pytest.raises(ConflictError):
        _serve(client_user, ProductionTarget("iris"), {"features": IRIS_ROW})
    assert (
        _serve(client_user, VersionTarget("iris", 1), {"features": IRIS_ROW}).version.version == 1
    )


def test_a_split_target_lists_its_members_and_routes_a_client_id_stickily(
    client_user, iris_model, iris_production, django_capture_on_commit_callbacks
):
    iris_version(iris_model, c=0.01)
    with django_capture_on_commit_callbacks(execute=True):
        traffic_split_set(
            model=iris_model,
            splits=[{"version": 1, "weight": 50}, {"version": 2, "weight": 50}],
            actor="tests",
        )
    entry = routing_entry_get(name="iris")
    target = ProductionTarget("iris")
    assert target.splits(entry)
    assert [v.version for v in target.candidates(entry, user=client_user)] == [1, 2]
    chosen = {target.choose(entry, user=client_user, client_id="alice").id for _ in range(20)}
    assert len(chosen) == 1


def test_a_new_target_is_one_small_case(client_user, iris_model, iris_production):
    """How an alias target plugs in (predictions/serving/__init__.py): a frozen Target with
    likely() and choose(); read-ahead, caching, logging and metrics need nothing more."""

    @dataclass(frozen=True)
    class NewestTarget(Target):
        model_name: str

        def likely(self, entry):
            return entry.version_numbered(max(entry.by_number))

        def choose(self, entry, *, user, client_id):
            return self.likely(entry)

    iris_version(iris_model, c=0.01)
    served = _serve(client_user, NewestTarget("iris"), {"features": IRIS_ROW})
    assert served.version.version == 2 and served.version.stage == "none"
    assert _serve(client_user, NewestTarget("iris"), {"features": IRIS_ROW}).cached


def test_routing_entries_are_frozen_typed_and_cacheable(iris_production):
    entry = routing_entry_get(name="iris")
    assert isinstance(entry, RoutingEntry)
    info = entry.versions[entry.production]
    assert isinstance(info, VersionInfo) and info.feature_order == tuple(factories.IRIS_FEATURES)
    assert pickle.loads(pickle.dumps(entry)) == entry
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.production = None
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.sha256 = "0" * 64


def test_a_routing_entry_of_another_shape_in_the_cache_is_rebuilt(iris_production):
    cache.set("routing:v2:iris", {"production": 999, "versions": {}}, 60)
    entry = routing_entry_get(name="iris")
    assert entry.production == iris_production.pk


def test_an_unknown_model_is_404_before_any_version(client_user):
    with pytest.raises(NotFoundError):
        _serve(client_user, VersionTarget("nope", 1), {"features": IRIS_ROW})


# --- the read-ahead key registry ----------------------------------------------------------


def test_every_owner_registers_its_key_in_dependency_order():
    assert readahead.readahead_providers() == [
        "authentication",
        "access_policy",
        "throttle",
        "routing",
        "result_cache",
    ]


def _plan(token: str, view=None, body=None) -> readahead.ReadAheadPlan:
    django_request = APIRequestFactory().post(
        "/api/v1/models/iris/predict", HTTP_AUTHORIZATION=f"Bearer {token}"
    )
    request = Request(django_request)
    view = view or PredictView()
    return readahead.readahead_plan(
        readahead.ReadAheadPlan(
            request=request, view=view, target=ProductionTarget("iris"), body=body
        )
    )


def test_a_plan_for_an_unknown_token_reads_only_the_token_and_routing(client_user):
    token = factories.token_create(client_user)
    plan = _plan(token)
    assert plan.user_pk is None  # this process never verified the token
    assert plan.keys == [
        auth_cache_key_for_request(plan.request),
        "routing-gen:v1:iris",
        "routing:v2:iris",
    ]
    assert plan.increments == [] and set(plan.keys) == plan.shared


def test_a_plan_for_a_known_token_reads_every_owners_key(client_api, client_user, iris_production):
    token = client_api._credentials["HTTP_AUTHORIZATION"].split()[1]
    assert (
        client_api.post(
            "/api/v1/models/iris/predict", {"features": IRIS_ROW}, format="json"
        ).status_code
        == 200
    )
    body = _Body({"features": IRIS_ROW})
    plan = _plan(token, body=lambda: body)
    assert plan.user_pk == client_user.pk
    assert plan.keys[:4] == [
        auth_cache_key_for_request(plan.request),
        f"access:models:{client_user.pk}",
        "routing-gen:v1:iris",
        "routing:v2:iris",
    ]
    assert len(plan.keys) == 5 and plan.keys[4].startswith(f"pred:v1:{iris_production.pk}:")
    assert plan.keys[4] not in plan.shared  # a result is only read once per request
    ((counter, window),) = plan.increments
    assert counter.startswith(f"throttle:predict:user:{client_user.pk}:") and window > 0


def test_a_registered_provider_runs_in_order_and_hears_of_refusals(client_user):
    heard = []

    def provider(plan):
        plan.read("extra:key")

    try:
        readahead.readahead_register(
            "extra", provider, order=15, on_refused=lambda plan: heard.append(plan)
        )
        names = readahead.readahead_providers()
        assert names.index("authentication") < names.index("extra") < names.index("access_policy")
        plan = _plan(factories.token_create(client_user))
        assert "extra:key" in plan.keys and "extra:key" not in plan.shared
        readahead.readahead_refused(plan)
        assert heard == [plan]
    finally:
        readahead.readahead_unregister("extra")
    assert "extra" not in readahead.readahead_providers()


def test_parked_values_and_counts_are_taken_once():
    readahead.readahead_set({"a": 1, "b": None}, {"c": 3})
    try:
        assert readahead.readahead_take("a") == 1
        assert readahead.readahead_take("a") is readahead.MISSING
        assert readahead.readahead_take("b") is None  # read ahead: not in the cache
        assert readahead.readahead_counted("c")
        assert readahead.readahead_count("c") == 3 and readahead.readahead_count("c") is None
    finally:
        readahead.readahead_clear()
    assert readahead.readahead_take("zzz") is readahead.MISSING


# --- the seam's boundary ------------------------------------------------------------------


def _python_files():
    for folder in ("config", "mlregistry", "predictions", "backups", "bench", "tests", "quality"):
        yield from (ROOT / folder).rglob("*.py") if (ROOT / folder).exists() else ()


def test_nothing_outside_the_package_imports_its_private_names():
    package = ROOT / "predictions" / "serving"
    offenders = []
    for path in _python_files():
        if package in path.parents:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "predictions.serving"
            ):
                private = [a.name for a in node.names if a.name.startswith("_")]
                module_private = any(part.startswith("_") for part in node.module.split(".")[2:])
                if private or module_private:
                    offenders.append(f"{path.relative_to(ROOT)}: {node.module} {private}")
    assert offenders == []
