"""Property tests of the feature validator: whatever JSON a client sends, it either returns rows
the model can take (finite, in range, in schema order) or a 400 naming exactly the bad fields."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rest_framework.exceptions import ParseError

from config.errors import PayloadTooLarge, ValidationFailed
from predictions.body import RowDecoder, parse_json
from predictions.loader import compile_features
from predictions.validation import fast_numeric_rows, in_range, payload_rows, rows_validate

SCHEMA = compile_features(
    [
        {"name": "age", "type": "integer", "min": 18, "max": 100},
        {"name": "income", "type": "float", "min": 0},
        {"name": "ratio", "type": "float"},
        {"name": "member", "type": "boolean", "required": False},
    ]
)
NAMES = frozenset(f.name for f in SCHEMA)
FLOATS_ONLY = compile_features(
    [{"name": "a", "type": "float", "min": -5, "max": 5}, {"name": "b", "type": "float"}]
)

json_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)
rows = st.dictionaries(
    st.one_of(st.sampled_from(sorted(NAMES)), st.text(max_size=6)), json_values, max_size=6
)


def _valid_value(feature, value) -> bool:
    if value is None:
        return not feature.required
    if feature.type == "boolean":
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if not math.isfinite(value) or not feature.low <= value <= feature.high:
        return False
    return feature.type != "integer" or float(value).is_integer()


@settings(max_examples=400, deadline=None)
@given(row=rows)
def test_a_row_is_accepted_exactly_when_every_field_is_valid(row):
    bad = {name for name in row if name not in NAMES}
    bad |= {f.name for f in SCHEMA if f.name not in row and f.required}
    bad |= {f.name for f in SCHEMA if f.name in row and not _valid_value(f, row[f.name])}
    try:
        (values,) = rows_validate([row], SCHEMA, NAMES, batch=False)
    except ValidationFailed as error:
        assert set(error.fields) == bad
        assert all(error.fields[name] for name in bad)
        return
    assert not bad
    for feature, value in zip(SCHEMA, values, strict=True):
        if feature.type != "boolean" and feature.name in row and row[feature.name] is not None:
            assert math.isfinite(value) and feature.low <= value <= feature.high


@settings(max_examples=200, deadline=None)
@given(batch=st.lists(rows, min_size=1, max_size=4))
def test_batch_errors_carry_the_row_index(batch):
    try:
        rows_validate(batch, SCHEMA, NAMES, batch=True)
    except ValidationFailed as error:
        for key in error.fields:
            index = int(key.split("]")[0].removeprefix("instances["))
            assert 0 <= index < len(batch)
            assert key.split("].", 1)[1] in set(batch[index]) | NAMES


float_rows = st.dictionaries(
    st.sampled_from(["a", "b", "c"]),
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.booleans()),
    max_size=3,
)


@settings(max_examples=400, deadline=None)
@given(batch=st.lists(float_rows, min_size=1, max_size=5))
def test_the_fast_path_never_accepts_what_the_full_check_refuses(batch):
    lows = np.array([f.low for f in FLOATS_ONLY])
    highs = np.array([f.high for f in FLOATS_ONLY])
    fast = fast_numeric_rows(batch, FLOATS_ONLY, lows, highs)
    names = frozenset(f.name for f in FLOATS_ONLY)
    try:
        full = rows_validate(batch, FLOATS_ONLY, names, batch=True)
    except ValidationFailed:
        assert fast is None
        return
    if fast is not None:
        assert np.array_equal(fast, np.array(full, dtype=np.float64))


@pytest.mark.parametrize("payload", [None, 3, "x", [1, 2]])
def test_a_row_that_is_not_an_object_is_named(payload):
    with pytest.raises(ValidationFailed) as error:
        rows_validate([payload], SCHEMA, NAMES, batch=True)
    assert list(error.value.fields) == ["instances[0]"]


# --- The typed decoder (predictions/body.py) against the general path ---------------------

DECODER = RowDecoder(tuple(f.name for f in FLOATS_ONLY))
BOUNDS = SimpleNamespace(
    lows=np.array([f.low for f in FLOATS_ONLY]),
    highs=np.array([f.high for f in FLOATS_ONLY]),
    bounded_low=any(np.isfinite(f.low) for f in FLOATS_ONLY),
    bounded_high=any(np.isfinite(f.high) for f in FLOATS_ONLY),
)
float_names = frozenset(f.name for f in FLOATS_ONLY)
top_level = st.fixed_dictionaries(
    {},
    optional={
        "features": st.one_of(float_rows, json_values),
        "instances": st.one_of(st.lists(float_rows, max_size=3), json_values),
        "client_id": json_values,
        "model_id": json_values,
    },
)


def _general(raw: bytes):
    """What the general path makes of a body: (values, batch) or the error it answers with."""
    try:
        rows, batch = payload_rows(parse_json(raw))
        return rows_validate(rows, FLOATS_ONLY, float_names, batch=batch), batch
    except (ValidationFailed, PayloadTooLarge, ParseError) as error:
        return error


@settings(max_examples=500, deadline=None)
@given(body=top_level)
def test_the_typed_decoder_only_accepts_what_the_general_path_accepts(body):
    raw = json.dumps(body, allow_nan=True).encode()  # NaN/Infinity tokens included on purpose
    typed = DECODER.decode(raw)
    general = _general(raw)
    if typed is None or not in_range(BOUNDS, typed.matrix):
        return  # the service falls back to the general path: same answer by construction
    assert not isinstance(general, Exception), (raw, general)
    values, batch = general
    assert typed.batch == batch
    assert np.array_equal(typed.matrix, np.array(values, dtype=np.float64))
    assert typed.client_id == body.get("client_id")


@pytest.mark.parametrize(
    ("raw", "accepted"),
    [
        (b'{"features": {"a": 1, "b": 2.5}}', True),
        (b'{"features": {"a": 1, "b": 2.5, "c": 3}}', False),  # unknown feature
        (b'{"features": {"a": true, "b": 2.5}}', False),  # bool is not a number here
        (b'{"features": {"a": "1", "b": 2.5}}', False),
        (b'{"features": {"a": 1}}', False),  # missing feature
        (b'{"features": {"a": 1, "b": NaN}}', False),  # not JSON: the general path names it
        # A duplicate key: the typed decoder checks every occurrence and gives up on a bad one;
        # the general path then decides (the last occurrence wins there).
        (b'{"features": {"a": "x", "a": 1, "b": 2}}', False),
        (b'{"features": {"a": 1, "a": "x", "b": 2}}', False),
        (b'{"instances": []}', False),
        (b'{"instances": null}', False),
        # Both a row and a batch: ambiguous, so the general path refuses it, naming them.
        (b'{"instances": [{"a": 1, "b": 2}], "features": {"a": 1, "b": 0}}', False),
        (b'{"instances": [{"a": 1, "b": 2}], "features": {"a": 0}}', False),
        (b'{"features": {"a": 1, "b": 1e999}}', False),
    ],
)
def test_typed_decoder_examples(raw, accepted):
    typed = DECODER.decode(raw)
    assert (typed is not None) == accepted
    general = _general(raw)
    if accepted:
        assert not isinstance(general, Exception)
        assert np.array_equal(typed.matrix, np.array(general[0], dtype=np.float64))
