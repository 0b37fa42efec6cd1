"""Plain helpers that build real objects: users, tokens, models trained on scikit-learn's data."""

from __future__ import annotations

import io
from functools import cache

import skops.io as sio
from django.contrib.auth.models import Permission, User
from knox.models import AuthToken

from mlregistry import services
from mlregistry.models import ModelVersion, RegisteredModel

REGISTRY_PERMS = [
    "add_registeredmodel",
    "change_registeredmodel",
    "delete_registeredmodel",
    "add_modelversion",
    "change_modelversion",
    "delete_modelversion",
    "promote_modelversion",
]


def user_create(
    username: str = "client", *, staff: bool = False, perms: list[str] | None = None
) -> User:
    user = User.objects.create_user(username=username, password="pw-" + username, is_staff=staff)
    if perms:
        user.user_permissions.add(*Permission.objects.filter(codename__in=perms))
        user = User.objects.get(pk=user.pk)  # drop the permission cache
    return user


def staff_create(username: str = "staff", *, extra_perms: list[str] | None = None) -> User:
    return user_create(username, staff=True, perms=REGISTRY_PERMS + (extra_perms or []))


def token_create(user: User) -> str:
    return AuthToken.objects.create(user=user)[1]


IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@cache
def iris_frame():
    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True)
    x = frame.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    return x, frame.target


@cache
def _iris_classifier_bytes(c: float) -> bytes:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = iris_frame()
    return sio.dumps(
        make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=500)).fit(x, y)
    )


def iris_classifier_bytes(c: float = 1.0) -> bytes:
    """skops bytes of a fitted iris pipeline; different C gives different bytes and sha256."""
    return _iris_classifier_bytes(c)


@cache
def diabetes_regressor_bytes() -> bytes:
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    frame = load_diabetes(as_frame=True)
    return sio.dumps(Ridge().fit(frame.data, frame.target))


def registered_model_create(
    name: str = "iris", *, actor: User | str = "tests", task: str = "classification"
) -> RegisteredModel:
    return services.registered_model_create(name=name, actor=actor, task=task)


def version_create(
    model: RegisteredModel, *, c: float = 1.0, actor: User | str = "tests", **kwargs
) -> ModelVersion:
    return services.model_version_create(
        model=model, artifact=io.BytesIO(iris_classifier_bytes(c)), actor=actor, **kwargs
    )


def iris_dataset_create(
    name: str = "iris-data", *, frame=None, actor: User | str = "tests", **kwargs
):
    """A CSV dataset of iris (features + `species` target), through the dataset service."""
    from quality import training

    if frame is None:
        x, y = iris_frame()
        frame = x.assign(species=y)
    return training.dataset_create(
        name=name,
        actor=actor,
        target_column="species",
        feature_columns=IRIS_FEATURES,
        file=io.BytesIO(frame.to_csv(index=False).encode()),
        **kwargs,
    )
