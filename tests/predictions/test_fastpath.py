"""The verified numpy fast path (predictions/fastpath.py): exactly scikit-learn's answer for the
linear pipelines it knows, nothing for the others, and refused when it is not bit-for-bit equal."""

from functools import cache

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import Lasso, LinearRegression, LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, PolynomialFeatures, StandardScaler

from predictions import fastpath
from predictions.fastpath import fast_predict_for
from predictions.loader import model_cache
from tests.factories import IRIS_FEATURES
from tests.predictions.conftest import iris_estimator


@cache
def _split(dataset: str):
    """(train x, held-out x, train y) of one of scikit-learn's bundled datasets."""
    loader = {"iris": load_iris, "breast_cancer": load_breast_cancer, "diabetes": load_diabetes}
    x, y = loader[dataset](return_X_y=True)
    x_train, x_test, y_train, _ = train_test_split(x, y, test_size=0.25, random_state=0)
    return x_train, x_test, y_train


SUPPORTED = {
    "iris-multinomial-lr": ("iris", lambda: LogisticRegression(max_iter=1000)),
    "iris-scaler-lr": ("iris", lambda: make_pipeline(StandardScaler(), LogisticRegression())),
    "breast-cancer-scaler-binary-lr": (
        "breast_cancer",
        lambda: make_pipeline(StandardScaler(), LogisticRegression()),
    ),
    "diabetes-linear-regression": ("diabetes", LinearRegression),
    "diabetes-ridge": ("diabetes", Ridge),
    "diabetes-minmax-ridge": ("diabetes", lambda: make_pipeline(MinMaxScaler(), Ridge())),
    "diabetes-maxabs-lasso": (
        "diabetes",
        lambda: make_pipeline(MaxAbsScaler(), Lasso(alpha=0.1)),
    ),
}


def _fitted(dataset: str, make):
    x_train, x_test, y_train = _split(dataset)
    return make().fit(x_train, y_train), x_test


def _has_proba(estimator) -> bool:
    return hasattr(estimator, "classes_") and hasattr(estimator, "predict_proba")


def _fast_for(estimator, width: int):
    return fast_predict_for(estimator, width=width, has_proba=_has_proba(estimator))


def _assert_same_as_sklearn(estimator, fast, rows):
    predictions, probabilities = fast(rows)
    assert np.array_equal(predictions, estimator.predict(rows))
    if _has_proba(estimator):
        assert np.array_equal(probabilities, estimator.predict_proba(rows))
    else:
        assert probabilities is None


@pytest.mark.parametrize("case", SUPPORTED)
def test_supported_models_give_exactly_sklearns_answer_row_by_row_and_batched(case):
    dataset, make = SUPPORTED[case]
    estimator, x_test = _fitted(dataset, make)
    fast = _fast_for(estimator, x_test.shape[1])
    assert callable(fast)
    for i in range(len(x_test)):
        _assert_same_as_sklearn(estimator, fast, x_test[i : i + 1])
    _assert_same_as_sklearn(estimator, fast, x_test)


def test_binary_and_multinomial_probabilities_cover_every_class():
    # The held-out rows exercise every class, so the argmax and the class lookup are checked.
    for case in ("iris-multinomial-lr", "iris-scaler-lr", "breast-cancer-scaler-binary-lr"):
        estimator, x_test = _fitted(*SUPPORTED[case])
        predictions, probabilities = _fast_for(estimator, x_test.shape[1])(x_test)
        assert set(predictions.tolist()) == set(estimator.classes_.tolist())
        assert probabilities.shape == (len(x_test), len(estimator.classes_))


UNSUPPORTED = {
    "random-forest": ("iris", lambda: RandomForestClassifier(n_estimators=5, random_state=0)),
    "polynomial-features": (
        "diabetes",
        lambda: make_pipeline(PolynomialFeatures(2), Ridge()),
    ),
    "minmax-clip": ("diabetes", lambda: make_pipeline(MinMaxScaler(clip=True), Ridge())),
}


@pytest.mark.parametrize("case", UNSUPPORTED)
def test_other_models_have_no_fast_path(case):
    dataset, make = UNSUPPORTED[case]
    estimator, x_test = _fitted(dataset, make)
    assert _fast_for(estimator, x_test.shape[1]) is None


def test_multi_target_ridge_has_no_fast_path():
    x_train, x_test, y_train = _split("diabetes")
    targets = np.column_stack([y_train, y_train * 0.5 + x_train[:, 0]])
    estimator = Ridge().fit(x_train, targets)
    assert _fast_for(estimator, x_test.shape[1]) is None


def _off_by_one_ulp(monkeypatch):
    """Injected fault: the final step answers a hair (one ulp) away from scikit-learn."""
    real = fastpath._final_step

    def nudged(step):
        final = real(step)
        if final is None:
            return None

        def predict(x):
            predictions, probabilities = final(x)
            if probabilities is None:
                return np.nextafter(predictions, np.inf), None
            return predictions, np.nextafter(probabilities, np.inf)

        return predict

    monkeypatch.setattr(fastpath, "_final_step", nudged)


@pytest.mark.parametrize("case", ["iris-scaler-lr", "diabetes-minmax-ridge"])
def test_a_fast_path_not_bit_for_bit_equal_is_refused(case, monkeypatch):
    dataset, make = SUPPORTED[case]
    estimator, x_test = _fitted(dataset, make)
    _off_by_one_ulp(monkeypatch)
    assert _fast_for(estimator, x_test.shape[1]) is None


# --- Through the API ----------------------------------------------------------------------

ROWS = [
    [5.1, 3.5, 1.4, 0.2],
    [6.3, 2.5, 4.9, 1.5],
    [7.7, 3.0, 6.1, 2.3],
    [5.9, 3.0, 4.2, 1.5],
    [6.0, 2.2, 5.0, 1.5],  # near the versicolor/virginica boundary
]


def _body(row):
    return dict(zip(IRIS_FEATURES, row, strict=True))


def _served(iris_production):
    return model_cache.peek(iris_production.pk, iris_production.artifact_sha256)


def _expected(estimator, rows):
    """scikit-learn's answers in-process for these rows, predicted together as one matrix."""
    x = np.array(rows)
    labels = [str(c) for c in estimator.classes_]
    return [
        {
            "prediction": p,
            "confidence": max(probs),
            "probabilities": dict(zip(labels, probs, strict=True)),
        }
        for p, probs in zip(
            estimator.predict(x).tolist(), estimator.predict_proba(x).tolist(), strict=True
        )
    ]


def _answers(body):
    return {k: body[k] for k in ("prediction", "confidence", "probabilities")}


@pytest.mark.django_db
def test_the_served_iris_pipeline_answers_through_the_fast_path_exactly(
    client_api, iris_production, settings
):
    settings.PREDICTION_CACHE_TTL = 0  # every answer computed, none from the result cache
    url = "/api/v1/models/iris/predict"
    first = client_api.post(url, {"features": _body(ROWS[0])}, format="json")
    assert first.status_code == 200, first.json()
    loaded = _served(iris_production)
    assert loaded.fast_predict is not None
    # A spy (it calls through): proves the answers below come from the fast path.
    real, calls = loaded.fast_predict, []
    loaded.fast_predict = lambda x: calls.append(x.shape) or real(x)

    estimator = iris_estimator(1.0)
    for row in ROWS:
        body = client_api.post(url, {"features": _body(row)}, format="json").json()
        assert [_answers(body)] == _expected(estimator, [row])
    batch = client_api.post(url, {"instances": [_body(r) for r in ROWS]}, format="json").json()
    assert [_answers(b) for b in batch["predictions"]] == _expected(estimator, ROWS)
    assert calls == [(1, 4)] * len(ROWS) + [(len(ROWS), 4)]


@pytest.mark.django_db
def test_a_refused_fast_path_serves_sklearns_answer(client_api, iris_production, monkeypatch):
    _off_by_one_ulp(monkeypatch)
    url = "/api/v1/models/iris/predict"
    body = client_api.post(url, {"features": _body(ROWS[1])}, format="json").json()
    assert _served(iris_production).fast_predict is None
    assert [_answers(body)] == _expected(iris_estimator(1.0), [ROWS[1]])


@pytest.mark.django_db
def test_a_web_process_freezes_a_loaded_model_out_of_the_collectors_sight(iris_production):
    """config/wsgi.py freezes what the web process imported; a model loaded later is frozen
    too, so full collections don't scan it on every request's time."""
    import gc

    from predictions.serving import version_info

    gc.freeze()  # as config/wsgi.py does at import
    try:
        loaded = model_cache.get(version_info(iris_production), model_name="iris")
        tracked = {id(o) for o in gc.get_objects()}
        assert id(loaded.estimator) not in tracked and id(loaded) not in tracked
    finally:
        gc.unfreeze()
    model_cache.clear()
    gc.collect()
    unfrozen = model_cache.get(version_info(iris_production), model_name="iris")
    assert id(unfrozen.estimator) in {id(o) for o in gc.get_objects()}  # a process that never froze
