import pytest

from mlregistry.schema import SchemaError, check_schema_matches, infer_schema, normalize_schema
from tests import factories


def test_names_only_become_required_floats():
    assert normalize_schema(["a", {"name": "b", "type": "integer", "min": 0, "max": 9}]) == [
        {"name": "a", "type": "float", "required": True},
        {"name": "b", "type": "integer", "required": True, "min": 0, "max": 9},
    ]


def test_features_wrapper_is_accepted():
    assert normalize_schema({"features": ["a"]}) == [
        {"name": "a", "type": "float", "required": True}
    ]


@pytest.mark.parametrize(
    ("raw", "where", "says"),
    [
        ([], "input_schema", "non-empty"),
        ("a,b", "input_schema", "non-empty"),
        ([3], "input_schema[0]", "object"),
        ([{"type": "float"}], "input_schema[0]", "name"),
        (["a", "a"], "input_schema[1]", "duplicate"),
        ([{"name": "a", "type": "tensor"}], "input_schema[0]", "type must be one of"),
        ([{"name": "a", "min": "low"}], "input_schema[0].min", "finite number"),
        ([{"name": "a", "max": float("inf")}], "input_schema[0].max", "finite number"),
        ([{"name": "a", "min": 5, "max": 1}], "input_schema[0]", "greater than max"),
        ([{"name": "a", "required": "yes"}], "input_schema[0]", "true or false"),
        ([{"name": "a", "colour": "red"}], "input_schema[0]", "unknown keys"),
    ],
)
def test_invalid_schemas_name_the_problem(raw, where, says):
    with pytest.raises(SchemaError) as error:
        normalize_schema(raw)
    assert where in error.value.fields
    assert says in " ".join(error.value.fields[where])


def test_description_is_kept():
    assert (
        normalize_schema([{"name": "a", "description": "age in years"}])[0]["description"]
        == "age in years"
    )


def test_inference_from_names_and_from_count():
    import numpy as np
    from sklearn.linear_model import LinearRegression

    x, y = factories.iris_frame()
    named = LinearRegression().fit(x, y)
    assert [f["name"] for f in infer_schema(named)] == list(x.columns)
    unnamed = LinearRegression().fit(np.asarray(x), y)
    assert [f["name"] for f in infer_schema(unnamed)] == ["x0", "x1", "x2", "x3"]
    assert infer_schema(object()) is None


def test_supplied_schema_must_match_the_estimator():
    from sklearn.linear_model import LinearRegression

    x, y = factories.iris_frame()
    fitted = LinearRegression().fit(x, y)
    with pytest.raises(SchemaError, match="4"):
        check_schema_matches(normalize_schema(["a", "b"]), fitted)
    with pytest.raises(SchemaError, match="names differ"):
        check_schema_matches(normalize_schema(["a", "b", "c", "d"]), fitted)
    check_schema_matches(normalize_schema(list(x.columns)), fitted)
