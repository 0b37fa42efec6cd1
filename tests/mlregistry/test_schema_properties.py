"""Properties of input-schema normalisation, over generated schemas and arbitrary JSON."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from mlregistry.schema import FEATURE_TYPES, SchemaError, normalize_schema

names = st.text(min_size=1, max_size=30).filter(lambda s: all(ord(c) >= 0x20 for c in s))
finite = st.floats(allow_nan=False, allow_infinity=False, width=32) | st.integers(-1000, 1000)


@st.composite
def features(draw):
    feature = {"name": draw(names)}
    if draw(st.booleans()):
        feature["type"] = draw(st.sampled_from(FEATURE_TYPES))
    low = draw(st.none() | finite)
    high = draw(st.none() | finite)
    if low is not None and high is not None and low > high:
        low, high = high, low
    if low is not None:
        feature["min"] = low
    if high is not None:
        feature["max"] = high
    if draw(st.booleans()):
        feature["required"] = draw(st.booleans())
    return feature


valid_schemas = st.lists(features(), min_size=1, max_size=12, unique_by=lambda f: f["name"])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(valid_schemas)
def test_a_valid_schema_keeps_its_features_in_order(raw):
    normalized = normalize_schema(raw)
    assert [f["name"] for f in normalized] == [f["name"] for f in raw]
    for given_feature, feature in zip(raw, normalized, strict=True):
        assert feature["type"] == given_feature.get("type", "float")
        assert feature["required"] == given_feature.get("required", True)
        assert feature.get("min") == given_feature.get("min")
        assert feature.get("max") == given_feature.get("max")


@settings(max_examples=200, deadline=None)
@given(valid_schemas)
def test_normalising_is_idempotent(raw):
    once = normalize_schema(raw)
    assert normalize_schema(once) == once
    assert normalize_schema({"features": once}) == once


@settings(max_examples=100, deadline=None)
@given(valid_schemas)
def test_bare_names_mean_required_floats(raw):
    normalized = normalize_schema([f["name"] for f in raw])
    assert all(f["type"] == "float" and f["required"] for f in normalized)


@settings(max_examples=100, deadline=None)
@given(valid_schemas, st.data())
def test_a_duplicated_name_is_always_refused(raw, data):
    duplicate = dict(data.draw(st.sampled_from(raw)))
    try:
        normalize_schema([*raw, duplicate])
    except SchemaError as exc:
        assert any("duplicate" in m for msgs in exc.fields.values() for m in msgs)
    else:
        raise AssertionError("a duplicate feature name was accepted")


@settings(max_examples=100, deadline=None)
@given(valid_schemas, st.data())
def test_min_above_max_is_always_refused(raw, data):
    index = data.draw(st.integers(0, len(raw) - 1))
    low = data.draw(st.integers(1, 1000))
    broken = [dict(f) for f in raw]
    broken[index]["min"], broken[index]["max"] = low, low - data.draw(st.integers(1, 1000))
    try:
        normalize_schema(broken)
    except SchemaError as exc:
        assert f"input_schema[{index}]" in exc.fields
    else:
        raise AssertionError("min > max was accepted")


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_is_either_a_schema_or_a_schema_error(raw):
    try:
        normalized = normalize_schema(raw)
    except SchemaError as exc:
        assert exc.status_code == 400 and exc.message
        return
    assert normalized and all(f["type"] in FEATURE_TYPES for f in normalized)
    for feature in normalized:
        for bound in ("min", "max"):
            if bound in feature:
                assert math.isfinite(feature[bound]) and not isinstance(feature[bound], bool)
