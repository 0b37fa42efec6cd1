import math

import numpy as np

from predictions.loader import compile_features
from predictions.validation import fast_numeric_rows

FEATURES = compile_features([{"name": "a", "min": 0, "max": 10}, {"name": "b"}])
LOWS = np.array([f.low for f in FEATURES])
HIGHS = np.array([f.high for f in FEATURES])


def _fast(rows, features=FEATURES, lows=LOWS, highs=HIGHS):
    return fast_numeric_rows(rows, features, lows, highs)


def test_plain_rows_become_one_float_matrix_in_schema_order():
    matrix = _fast([{"b": 2, "a": 1.5}, {"a": 3, "b": -4.0}])
    assert matrix.dtype == np.float64 and matrix.tolist() == [[1.5, 2.0], [3.0, -4.0]]


def test_anything_doubtful_falls_back_to_the_row_by_row_check():
    for rows in (
        [{"a": 1}],  # missing
        [{"a": 1, "b": 2, "c": 3}],  # unknown
        [{"a": 1, "c": 2}],  # unknown in place of a missing one
        [{"a": True, "b": 2}],  # bool is not a number here
        [{"a": "1", "b": 2}],
        [{"a": None, "b": 2}],
        [{"a": math.nan, "b": 2}],
        [{"a": 11, "b": 2}],  # above max
        [{"a": -1, "b": 2}],  # below min
        [{"a": 10**400, "b": 2}],  # overflows a float
        ["not a row"],
    ):
        assert _fast(rows) is None, rows


def test_a_one_feature_schema_still_gives_a_matrix():
    features = compile_features([{"name": "only"}])
    lows, highs = np.array([-math.inf]), np.array([math.inf])
    assert _fast([{"only": 1.0}, {"only": 2}], features, lows, highs).shape == (2, 1)
