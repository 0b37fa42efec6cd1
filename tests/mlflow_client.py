"""Run by the tests with the Python of the mlflow virtualenv (tests/mlflow_env.py), never
imported by them: MLflow's own client saves, logs and registers real scikit-learn models.

    python tests/mlflow_client.py save DIR [--format skops|cloudpickle|pickle] [--kind K]
    python tests/mlflow_client.py save-all DIR
    python tests/mlflow_client.py populate TRACKING_URI
    python tests/mlflow_client.py add-version TRACKING_URI

Prints one JSON object on its last line saying what it did.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

warnings.filterwarnings("ignore")


def iris():
    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True)
    x = frame.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    return x, frame.target.map({0: "setosa", 1: "versicolor", 2: "virginica"})


def diabetes():
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True)
    return frame.data, frame.target


def fitted(kind: str, c: float = 1.0):
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "regressor":
        x, y = diabetes()
        return Ridge(alpha=c).fit(x, y), x, y
    x, y = iris()
    if kind == "tensor":  # fitted and logged on a bare array: MLflow writes a tensor signature
        return LogisticRegression(C=c, max_iter=500).fit(x.values, y), x.values, y
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=500))
    return model.fit(x, y), x, y


def requirements(fmt: str) -> list[str]:
    """What MLflow's inference would write (its pins of the libraries the model imports),
    given up front: inferring them loads the model in a subprocess, which takes a minute on a
    busy machine."""
    from importlib.metadata import version

    names = ["mlflow", "scikit-learn", "numpy", "scipy", "pandas"]
    names += ["skops"] if fmt == "skops" else ["cloudpickle"] if fmt == "cloudpickle" else []
    return [f"{name}=={version(name)}" for name in names]


def save(args) -> dict:
    import mlflow.sklearn

    model, x, _ = fitted(args.kind)
    mlflow.sklearn.save_model(
        model,
        args.dir,
        serialization_format=args.format,
        input_example=x[:5],
        pip_requirements=requirements(args.format),
    )
    return {"dir": args.dir}


# save-all: the model folders the tests read, by name: (kind, serialization format).
MODELS = {
    "iris-skops": ("classifier", "skops"),
    "iris-cloudpickle": ("classifier", "cloudpickle"),
    "iris-pickle": ("classifier", "pickle"),
    "diabetes-skops": ("regressor", "skops"),
    "iris-tensor": ("tensor", "skops"),
}


def save_all(args) -> dict:
    import mlflow.sklearn

    for name, (kind, fmt) in MODELS.items():
        model, x, _ = fitted(kind)
        mlflow.sklearn.save_model(
            model,
            f"{args.dir}/{name}",
            serialization_format=fmt,
            input_example=x[:5],
            pip_requirements=requirements(fmt),
        )
    return {"dir": args.dir, "models": list(MODELS)}


def _log(client, name: str, kind: str, c: float, fmt: str, stage: str | None) -> dict:
    import mlflow
    import mlflow.sklearn

    model, x, y = fitted(kind, c)
    with mlflow.start_run() as run:
        mlflow.log_param("C", c)
        mlflow.log_param("kind", kind)
        mlflow.log_metric("train_score", float(model.score(x, y)))
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            input_example=x[:5],
            serialization_format=fmt,
            registered_model_name=name,
            pip_requirements=requirements(fmt),
        )
    version = str(info.registered_model_version)
    client.set_model_version_tag(name, version, "trained_by", "mlflow-test")
    client.update_model_version(name, version, description=f"{kind} with C={c}")
    if stage:
        client.transition_model_version_stage(name, version, stage)
    return {"name": name, "version": int(version), "run_id": run.info.run_id, "stage": stage}


def populate(args) -> dict:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(args.uri)
    mlflow.set_experiment("registry-import")
    client = MlflowClient()
    logged = [
        _log(client, "iris-mlflow", "classifier", 1.0, "skops", "Production"),
        _log(client, "iris-mlflow", "classifier", 0.5, "cloudpickle", "Staging"),
        _log(client, "iris-mlflow", "classifier", 0.1, "skops", "Production"),
        _log(client, "diabetes-mlflow", "regressor", 1.0, "skops", None),
        _log(client, "tensor-mlflow", "tensor", 1.0, "skops", "Production"),
    ]
    client.update_registered_model("iris-mlflow", description="Iris species, from MLflow")
    client.set_registered_model_tag("iris-mlflow", "team", "vision")
    client.set_registered_model_alias("iris-mlflow", "champion", "3")
    client.set_registered_model_alias("iris-mlflow", "challenger", "2")
    return {"logged": logged}


def add_version(args) -> dict:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(args.uri)
    mlflow.set_experiment("registry-import")
    client = MlflowClient()
    logged = _log(client, "iris-mlflow", "classifier", 2.0, "skops", None)
    client.set_registered_model_alias("iris-mlflow", "champion", str(logged["version"]))
    return {"logged": [logged]}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    saving = sub.add_parser("save")
    saving.add_argument("dir")
    saving.add_argument("--format", default="skops")
    saving.add_argument("--kind", default="classifier")
    sub.add_parser("save-all").add_argument("dir")
    sub.add_parser("populate").add_argument("uri")
    sub.add_parser("add-version").add_argument("uri")
    args = parser.parse_args()
    result = {"save": save, "save-all": save_all, "populate": populate, "add-version": add_version}[
        args.command
    ](args)
    sys.stdout.write("\n" + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
