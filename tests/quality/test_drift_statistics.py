"""The drift decision as statistics: false alarms across many features, power against a real
shift, the effect-size floor and categories one side never saw. The statistics function is
called directly (no HTTP, no database), with fixed seeds."""

import math

import numpy as np
import pytest
from scipy.stats import false_discovery_control

from quality import drift

N_FEATURES = 20
REFERENCE_ROWS = 2000
WINDOW_ROWS = 500
RNG = np.random.default_rng(20261201)
MEANS = RNG.normal(0.0, 5.0, N_FEATURES)
SCALES = RNG.uniform(0.5, 3.0, N_FEATURES)
COLOURS = ["red", "green", "blue", "amber"]
COLOUR_SHARES = [0.4, 0.3, 0.2, 0.1]
# 16 numeric features and 4 categorical ones: both tests share one correction.
SCHEMA = [{"name": f"x{i}", "type": "float"} for i in range(16)] + [
    {"name": f"c{i}", "type": "string"} for i in range(16, N_FEATURES)
]


def _columns(seed: int, n: int, *, shift_sd: dict[int, float] | None = None) -> dict:
    rng = np.random.default_rng(seed)
    shift_sd = shift_sd or {}
    columns: dict = {}
    for i, feature in enumerate(SCHEMA):
        if feature["type"] == "float":
            mean = MEANS[i] + shift_sd.get(i, 0.0) * SCALES[i]
            columns[feature["name"]] = rng.normal(mean, SCALES[i], n)
        else:
            columns[feature["name"]] = list(rng.choice(COLOURS, n, p=COLOUR_SHARES))
    return columns


REFERENCE = _columns(1, REFERENCE_ROWS)


def _alarm(entries) -> bool:
    return any(entry["drift"] for entry in entries)


def test_windows_from_the_reference_raise_at_most_5_percent_false_alarms():
    windows = [
        drift.feature_drift(schema=SCHEMA, reference=REFERENCE, served=_columns(1000 + w, 500))
        for w in range(200)
    ]

    false_alarms = sum(_alarm(entries) for entries in windows) / len(windows)
    # What the uncorrected rule (any raw p < 0.05) would have said about the same windows.
    uncorrected = sum(any(e["p_value"] < 0.05 for e in entries) for entries in windows)

    assert false_alarms <= 0.05
    assert uncorrected / len(windows) > 0.4


def test_the_correction_alone_keeps_false_alarms_near_the_threshold():
    # Without the effect-size floor, Benjamini-Hochberg alone bounds window-level false alarms
    # by the threshold when nothing drifts; 200 windows leave room for sampling noise.
    alarms = sum(
        _alarm(
            drift.feature_drift(
                schema=SCHEMA,
                reference=REFERENCE,
                served=_columns(3000 + w, WINDOW_ROWS),
                min_ks_statistic=0.0,
                min_psi=0.0,
            )
        )
        for w in range(200)
    )
    assert alarms / 200 <= 0.08


def test_a_half_standard_deviation_shift_in_one_feature_is_detected_in_95_percent():
    shifted = "x7"
    detected = 0
    others_flagged = 0
    for w in range(100):
        served = _columns(5000 + w, WINDOW_ROWS, shift_sd={7: 0.5})
        entries = drift.feature_drift(schema=SCHEMA, reference=REFERENCE, served=served)
        detected += next(e for e in entries if e["feature"] == shifted)["drift"]
        others_flagged += sum(e["drift"] for e in entries if e["feature"] != shifted)

    assert detected / 100 >= 0.95
    assert others_flagged <= 5


def test_adjusted_p_values_are_benjamini_hochberg_over_the_tested_features():
    schema = [*SCHEMA, {"name": "never_served", "type": "float"}]
    served = _columns(7, WINDOW_ROWS, shift_sd={0: 0.3, 1: 0.2})

    entries = drift.feature_drift(schema=schema, reference=REFERENCE, served=served)

    tested = entries[:-1]
    expected = false_discovery_control([e["p_value"] for e in tested], method="bh")
    assert [e["p_value_adjusted"] for e in tested] == pytest.approx(list(expected))
    assert all(e["p_value_adjusted"] >= e["p_value"] for e in tested)
    untested = entries[-1]
    assert (untested["p_value"], untested["p_value_adjusted"], untested["drift"]) == (
        None,
        None,
        False,
    )


def test_a_significant_but_negligible_shift_is_not_drift():
    # 10,000 rows make a 0.1-SD shift highly significant, but its KS statistic (~0.04) is far
    # under the floor: nothing an operator should act on.
    schema = [{"name": "x", "type": "float"}]
    rng = np.random.default_rng(11)
    reference = {"x": rng.normal(0.0, 1.0, 5000)}
    served = {"x": rng.normal(0.1, 1.0, 10_000)}

    [entry] = drift.feature_drift(schema=schema, reference=reference, served=served)
    [no_floor] = drift.feature_drift(
        schema=schema, reference=reference, served=served, min_ks_statistic=0.0
    )

    assert entry["p_value_adjusted"] < 1e-4
    assert entry["effect_size_measure"] == "ks_statistic"
    assert entry["effect_size"] == entry["statistic"] < 0.1 == entry["min_effect_size"]
    assert entry["drift"] is False
    assert no_floor["drift"] is True


def test_the_floors_come_from_settings(settings):
    settings.DRIFT_MIN_KS_STATISTIC = 0.5
    settings.DRIFT_MIN_PSI = 3.0
    schema = [{"name": "x", "type": "float"}, {"name": "c", "type": "string"}]
    reference = [{"x": float(i), "c": "a" if i % 2 else "b"} for i in range(300)]
    served = [{"x": float(i) + 60, "c": "a" if i % 4 else "b"} for i in range(300)]

    entries = drift.feature_drift(schema=schema, reference=reference, served=served)

    assert [e["min_effect_size"] for e in entries] == [0.5, 3.0]
    assert [e["drift"] for e in entries] == [False, False]
    assert all(e["p_value_adjusted"] < 0.05 for e in entries)


# --- categories ------------------------------------------------------------------------------


def _category_rows(values, key="colour"):
    return [{key: v} for v in values]


def test_a_category_the_reference_never_saw_is_drift_when_it_is_common():
    schema = [{"name": "colour", "type": "string"}]
    rng = np.random.default_rng(21)
    reference = _category_rows(rng.choice(COLOURS, 2000, p=COLOUR_SHARES))
    served = _category_rows([*rng.choice(COLOURS, 350, p=COLOUR_SHARES), *["violet"] * 150])

    [entry] = drift.feature_drift(schema=schema, reference=reference, served=served)

    assert entry["drift"] is True
    assert entry["effect_size_measure"] == "psi"
    assert math.isfinite(entry["effect_size"]) and entry["effect_size"] > 0.25
    assert math.isfinite(entry["statistic"]) and entry["p_value"] < 1e-10


def test_a_few_rare_or_unseen_categories_are_not_drift():
    # Single rows of new values (typos, new ids) make cells expected to hold under one count;
    # chi-squared would call them significant and PSI's logarithm would be infinite.
    schema = [{"name": "colour", "type": "string"}]
    rng = np.random.default_rng(22)
    reference = _category_rows([*rng.choice(COLOURS, 1998, p=COLOUR_SHARES), "mauve", "teal"])
    served = _category_rows([*rng.choice(COLOURS, 497, p=COLOUR_SHARES), "violet", "cyan", "x"])

    [entry] = drift.feature_drift(schema=schema, reference=reference, served=served)

    assert entry["drift"] is False
    assert math.isfinite(entry["effect_size"]) and entry["effect_size"] < 0.1
    assert entry["p_value"] > 0.05


def test_population_stability_index_is_finite_with_empty_bins():
    assert drift.population_stability_index({"a": 10}, {"a": 10}) == 0.0
    one_sided = drift.population_stability_index({"a": 100}, {"b": 100})
    assert math.isfinite(one_sided) and one_sided > 1.0


def test_boolean_reference_written_as_strings_matches_served_booleans():
    schema = [{"name": "flag", "type": "boolean"}]
    reference = [{"flag": "true" if i % 3 else "False"} for i in range(600)]
    served = [{"flag": bool(i % 3)} for i in range(300)]

    [entry] = drift.feature_drift(schema=schema, reference=reference, served=served)

    assert entry["p_value"] == pytest.approx(1.0)
    assert entry["effect_size"] == pytest.approx(0.0, abs=1e-3)
    assert entry["drift"] is False


def test_one_category_on_both_sides_is_tested_and_identical():
    schema = [{"name": "flag", "type": "boolean"}]
    [entry] = drift.feature_drift(
        schema=schema, reference=[{"flag": True}] * 80, served=[{"flag": True}] * 60
    )
    assert (entry["p_value"], entry["p_value_adjusted"], entry["drift"]) == (1.0, 1.0, False)
