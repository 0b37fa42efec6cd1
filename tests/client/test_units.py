"""The client's pure parts: request bodies, schema inference, error parsing."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pandas as pd
import pytest
from mlregistry_client import NotFound, RegistryError, Unavailable, infer_input_schema
from mlregistry_client.errors import error_from_response
from mlregistry_client.registry import records_json


def test_records_json_is_exact_and_writes_missing_values_as_null():
    frame = pd.DataFrame(
        {
            "x": [0.1 + 0.2, np.nan, 1e-300],
            "n": [1, 2, 3],
            "s": ["a", None, "c"],
            "b": [True, False, True],
            "t": pd.to_datetime(["2024-01-01", None, "2024-01-03"]),
        }
    )
    body = json.loads(records_json(list(frame.columns), [frame[c].to_numpy() for c in frame]))
    rows = body["instances"]
    assert rows[0] == {"x": 0.1 + 0.2, "n": 1, "s": "a", "b": True, "t": "2024-01-01T00:00:00"}
    assert rows[1]["x"] is None and rows[1]["s"] is None and rows[1]["t"] is None
    assert rows[2]["x"] == 1e-300
    with pytest.raises(ValueError, match="no columns"):
        records_json([], [])


def test_input_schema_is_inferred_from_a_frame_rows_or_the_estimator():
    frame = pd.DataFrame({"a": [1.0], "b": [1], "c": [True], "d": ["x"]})
    assert [f["type"] for f in infer_input_schema(None, frame)] == [
        "float",
        "integer",
        "boolean",
        "string",
    ]
    rows = [{"a": 1.5, "b": 2, "c": False, "d": "x"}]
    assert infer_input_schema(None, rows) == infer_input_schema(None, frame)

    class Fitted:
        feature_names_in_ = np.array(["p", "q"])

    assert [f["name"] for f in infer_input_schema(Fitted())] == ["p", "q"]
    assert infer_input_schema(object()) is None
    with pytest.raises(ValueError, match="DataFrame or a list of dicts"):
        infer_input_schema(None, [[1, 2]])


def test_errors_are_typed_from_the_envelope_or_from_a_bare_answer():
    body = {"error": {"type": "not_found", "message": "No model.", "request_id": "r1"}}
    error = error_from_response(httpx.Response(404, json=body))
    assert isinstance(error, NotFound)
    assert (error.type, error.message, error.fields, error.request_id) == (
        "not_found",
        "No model.",
        {},
        "r1",
    )
    bare = error_from_response(
        httpx.Response(
            503, text="upstream down", headers={"Retry-After": "7", "X-Request-ID": "r2"}
        )
    )
    assert isinstance(bare, Unavailable)
    assert (bare.type, bare.retry_after, bare.request_id) == ("http_error", 7.0, "r2")
    odd = error_from_response(httpx.Response(418, text=""))
    assert type(odd) is RegistryError and odd.status == 418
