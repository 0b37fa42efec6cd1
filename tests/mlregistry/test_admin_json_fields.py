"""The admin's JSON text fields (upload metrics, params, metadata) parse with the API's one
parser: NUL, NaN, Infinity, deep nesting and integers beyond float range are form errors, never
a 500 from PostgreSQL (which refuses NUL, NaN and Infinity in JSON) or a RecursionError."""

import pytest
from django import forms

from mlregistry.forms import JSONTextField

BAD = {
    "NUL in a key": '{"a\\u0000": 1}',
    "NUL in a value": '{"a": "x\\u0000"}',
    "NaN": '{"accuracy": NaN}',
    "Infinity": '{"accuracy": -Infinity}',
    "integer beyond float range": '{"accuracy": %s}' % ("9" * 400),
    "deep nesting": '{"a": ' + "[" * 5000 + "]" * 5000 + "}",
    "not JSON": "{nope",
}


@pytest.mark.parametrize("case", list(BAD))
def test_hostile_json_is_a_form_error(case):
    with pytest.raises(forms.ValidationError):
        JSONTextField(expect=dict).clean(BAD[case])


def test_plain_json_still_parses():
    assert JSONTextField(expect=dict).clean('{"accuracy": 0.97, "n": [1, 2]}') == {
        "accuracy": 0.97,
        "n": [1, 2],
    }
    assert JSONTextField(expect=dict).clean("") is None
