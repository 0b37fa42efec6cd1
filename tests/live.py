"""A live server with real models, for the contract and client tests: an iris classifier with
string classes (production), a second iris version, a regressor, and a classifier without
predict_proba. Everything is trained here on data scikit-learn ships."""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache

import pytest
import skops.io as sio
from django.conf import settings as django_settings

from mlregistry import services
from tests import factories


@cache
def iris_named_classifier():
    """Logistic regression on iris with the species' names as classes."""
    from sklearn.linear_model import LogisticRegression

    x, y = factories.iris_frame()
    names = y.map({0: "setosa", 1: "versicolor", 2: "virginica"})
    return LogisticRegression(max_iter=500).fit(x, names)


@cache
def iris_margin_classifier():
    """A linear SVM: string classes, no predict_proba."""
    from sklearn.svm import LinearSVC

    x, y = factories.iris_frame()
    names = y.map({0: "setosa", 1: "versicolor", 2: "virginica"})
    return LinearSVC().fit(x, names)


@cache
def diabetes_regressor():
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    frame = load_diabetes(as_frame=True)
    return Ridge().fit(frame.data, frame.target)


IRIS_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


@dataclass
class World:
    url: str
    staff: str  # token of a staff user with the registry permissions
    client: str  # token of a plain API client
    staff_user: object
    client_user: object


def _version(model, estimator, actor):
    return services.model_version_create(
        model=model, artifact=io.BytesIO(sio.dumps(estimator)), actor=actor
    )


@pytest.fixture
def live_world(live_server, transactional_db, settings) -> World:
    # Served rows are written by the request that serves them, so feedback finds them at once;
    # no rate limit unless a test sets one.
    settings.PREDICTION_LOG_FLUSH_SECONDS = 0
    settings.PREDICTION_LOG_FLUSH_ROWS = 1
    settings.REST_FRAMEWORK = {
        **django_settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {},
    }
    staff = factories.staff_create(extra_perms=["download_modelversion"])
    client = factories.user_create("client")
    iris = factories.registered_model_create("iris", actor=staff)
    v1 = _version(iris, iris_named_classifier(), staff)
    services.model_version_transition(version=v1, stage="production", actor=staff)
    diabetes = factories.registered_model_create("diabetes", actor=staff, task="regression")
    d1 = _version(diabetes, diabetes_regressor(), staff)
    services.model_version_transition(version=d1, stage="production", actor=staff)
    margin = factories.registered_model_create("iris-margin", actor=staff)
    m1 = _version(margin, iris_margin_classifier(), staff)
    services.model_version_transition(version=m1, stage="production", actor=staff)
    return World(
        url=live_server.url,
        staff=factories.token_create(staff),
        client=factories.token_create(client),
        staff_user=staff,
        client_user=client,
    )
