"""Derives the exact globals a pickled model may import, and writes mlregistry/pickle_globals.py.

    .venv/bin/python scripts/pickle_allowlist.py          # rewrite the committed list
    .venv/bin/python scripts/pickle_allowlist.py --check  # exit 1 if the committed list differs

It fits every estimator of the retraining allow-list (mlregistry/estimators.py) and the model
kinds the tests register, on data scikit-learn ships, plus numpy arrays and scalars of every
plain dtype and scipy's sparse matrices and arrays, pickles each with protocols 2 to 5 and
records every (module, name) the unpickler asks for. Nothing here is typed by a user: what goes
in the list is what these objects need, and nothing else. A library upgrade that changes the
names makes --check (run by the test suite) fail, so the list is reviewed, never widened by hand.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "mlregistry" / "pickle_globals.py"

HEADER = '''"""The exact globals a pickled model may import: written by scripts/pickle_allowlist.py.

Derived by pickling every estimator of the retraining allow-list, the model kinds the tests
register, numpy arrays and scalars and scipy sparse matrices (protocols 2 to 5). Regenerate
with the script, never by hand; the test suite fails when the libraries need other names.
"""

PICKLE_ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
'''


def _setup_django() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def _model_kinds():
    """Fitted models: the retraining allow-list (as jobs build them) and the tests' kinds."""
    import numpy as np
    from sklearn.compose import make_column_transformer
    from sklearn.datasets import load_diabetes, load_iris
    from sklearn.linear_model import ElasticNet, Lasso
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import (
        MaxAbsScaler,
        MinMaxScaler,
        OneHotEncoder,
        PolynomialFeatures,
        StandardScaler,
    )

    from quality.estimators import ESTIMATORS

    iris = load_iris(as_frame=True)
    diabetes = load_diabetes(as_frame=True)
    data = {
        "classification": (iris.data, iris.target),
        "regression": (diabetes.data, diabetes.target),
    }
    for name, spec in sorted(ESTIMATORS.items()):
        x, y = data[str(spec.task)]
        params = {"n_estimators": 3} if "n_estimators" in spec.params else {}
        estimator = spec.cls(**params)
        if spec.scaled:
            estimator = make_pipeline(StandardScaler(), estimator)
        for features in (x, x.to_numpy()):  # with and without feature names
            yield name, estimator.fit(features, y)
    x, y = data["regression"]
    for extra in (ElasticNet(), Lasso()):
        yield type(extra).__name__, make_pipeline(MinMaxScaler(), extra).fit(x, y)
    yield "poly", make_pipeline(PolynomialFeatures(2), MaxAbsScaler(), Lasso()).fit(x, y)
    x, y = data["classification"]
    frame = x.assign(colour=np.where(y > 0, "red", "blue"))
    encoded = make_column_transformer(
        (OneHotEncoder(handle_unknown="ignore"), ["colour"]), remainder=StandardScaler()
    )
    from sklearn.linear_model import LogisticRegression

    yield (
        "column_transformer",
        make_pipeline(encoded, LogisticRegression(max_iter=500)).fit(frame, y),
    )


def _arrays():
    import numpy as np
    import scipy.sparse as sp

    dtypes = ["float64", "float32", "int64", "int32", "uint8", "bool", "complex128", "<U5"]
    for dtype in dtypes:
        array = np.zeros((2, 3), dtype=dtype)
        yield f"array {dtype}", array
        yield f"fortran array {dtype}", np.asfortranarray(array)
        yield f"scalar {dtype}", array.flat[0]
        yield f"dtype {dtype}", np.dtype(dtype)
    yield "object array", np.array(["a", 1, None], dtype=object)
    dense = np.eye(3)
    for kind in ("csr", "csc", "coo", "lil", "dok", "bsr", "dia"):
        yield f"{kind}_matrix", getattr(sp, f"{kind}_matrix")(dense)
        yield f"{kind}_array", getattr(sp, f"{kind}_array")(dense)


class _Recorder(pickle.Unpickler):
    def __init__(self, data: bytes, seen: set[tuple[str, str]]):
        super().__init__(io.BytesIO(data))
        self.seen = seen

    def find_class(self, module, name):
        from mlregistry.artifacts import pickle_global_name

        self.seen.add(pickle_global_name(module, name))
        return super().find_class(module, name)


def derive() -> set[tuple[str, str]]:
    """Every (module, name) the unpickler asks for while loading the objects above."""
    seen: set[tuple[str, str]] = set()
    objects = [*_model_kinds(), *_arrays()]
    for _, obj in objects:
        for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
            _Recorder(pickle.dumps(obj, protocol=protocol), seen).load()
    return seen


def render(names: set[tuple[str, str]]) -> str:
    lines = [f'        ("{module}", "{name}"),\n' for module, name in sorted(names)]
    return HEADER + "".join(lines) + "    }\n)\n"


def main(argv: list[str]) -> int:
    _setup_django()
    from mlregistry.artifacts import pickle_global_dangerous

    names = derive()
    dangerous = sorted(f"{m}.{n}" for m, n in names if pickle_global_dangerous(m, n))
    if dangerous:
        print("picklescan flags these as dangerous; they can never be allowed:", *dangerous)
        return 1
    text = render(names)
    if "--check" in argv:
        if TARGET.read_text() != text:
            print(f"{TARGET.relative_to(ROOT)} differs from what the libraries need now; run")
            print("    .venv/bin/python scripts/pickle_allowlist.py   and review the diff.")
            return 1
        print(f"{TARGET.relative_to(ROOT)}: {len(names)} globals, up to date.")
        return 0
    TARGET.write_text(text)
    print(f"wrote {len(names)} globals to {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
