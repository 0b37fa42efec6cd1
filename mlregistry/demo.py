"""The demo model `make run` registers: a classifier trained on the iris data scikit-learn ships."""

from __future__ import annotations

import io

from mlregistry import selectors, services
from mlregistry.models import ModelVersion, RegisteredModel, Stage

DEMO_MODEL_NAME = "iris-classifier"


def train_iris_pipeline(*, C: float = 1.0):
    """A scaler + logistic regression pipeline fitted on iris, with its metrics. Its classes are
    the species names (setosa, versicolor, virginica), so predictions read as answers."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    frame = load_iris(as_frame=True)
    features = frame.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    species = frame.target_names[frame.target]
    x_train, x_test, y_train, y_test = train_test_split(
        features, species, test_size=0.3, random_state=0, stratify=species
    )
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=500))
    pipeline.fit(x_train, y_train)
    metrics = {"accuracy": float(pipeline.score(x_test, y_test))}
    return pipeline, metrics, x_train


def demo_model_ensure(*, actor: services.Actor) -> ModelVersion:
    """Registers and promotes the demo model once; later calls return its production version."""
    import skops.io as sio

    model = RegisteredModel.objects.filter(name=DEMO_MODEL_NAME).first()
    if model is None:
        model = services.registered_model_create(
            name=DEMO_MODEL_NAME,
            actor=actor,
            description="Iris species from sepal and petal measurements (demo).",
            tags=["demo"],
        )
    current = selectors.production_version_get(model=model)
    if current is not None:
        return current
    pipeline, metrics, x_train = train_iris_pipeline()
    version = services.model_version_create(
        model=model,
        artifact=io.BytesIO(sio.dumps(pipeline)),
        actor=actor,
        metrics=metrics,
        metadata={"dataset": "sklearn.datasets.load_iris"},
        reference_sample=x_train.to_dict(orient="records"),
    )
    return services.model_version_transition(
        version=version, stage=Stage.PRODUCTION, actor=actor, comment="demo model"
    )
