"""A pickle or skops file made only of allow-listed classes can still carry crafted native state
(a tree's child indexes, a KD-tree's index array, a sparse matrix's indices) that compiled code
reads without bounds checks: such an artifact is refused at upload and at load, in a child
process here because the unchecked version kills the process with SIGSEGV."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import numpy
import pytest
from scipy import sparse
from sklearn.datasets import load_iris
from sklearn.ensemble import GradientBoostingClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from mlregistry import artifacts
from mlregistry.artifact_structures import StructureError, check_structures

X, Y = load_iris(return_X_y=True)


def _tree_with(**changes):
    model = DecisionTreeClassifier(max_depth=3, random_state=0).fit(X, Y)
    state = model.tree_.__getstate__()
    nodes = state["nodes"].copy()
    for field, value in changes.items():
        nodes[field][0] = value
    state["nodes"] = nodes
    model.tree_.__setstate__(state)
    return model


def _kd_with(mutate):
    model = KNeighborsClassifier(algorithm="kd_tree", leaf_size=2).fit(X, Y)
    state = list(model._tree.__getstate__())
    mutate(state)
    model._tree.__setstate__(tuple(state))
    return model


def _idx(state):
    state[1] = state[1].copy()
    state[1][0] = 10**9


def _leafless(state):
    state[2] = state[2].copy()
    state[2]["is_leaf"][:] = False


MALFORMED = {
    "tree child far out of range": lambda: _tree_with(left_child=10**9, right_child=10**9),
    "tree child pointing back (endless predict)": lambda: _tree_with(left_child=0),
    "tree split on a feature it lacks": lambda: _tree_with(feature=10**6),
    "kd-tree index out of range": lambda: _kd_with(_idx),
    "kd-tree without leaves": lambda: _kd_with(_leafless),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_native_state_is_refused_by_both_loaders(name):
    model = MALFORMED[name]()
    with pytest.raises(StructureError):
        check_structures(model)
    with pytest.raises(artifacts.ArtifactError, match="malformed"):
        artifacts.load_pickle(pickle.dumps(model, protocol=5))
    import skops.io as sio

    with pytest.raises(artifacts.ArtifactError, match="malformed"):
        artifacts.load_skops(sio.dumps(model))


def test_a_sparse_matrix_with_indices_out_of_range_is_refused():
    matrix = sparse.csr_matrix(numpy.eye(3))
    matrix.indices = matrix.indices.copy()
    matrix.indices[0] = 10**6
    with pytest.raises(StructureError):
        check_structures({"coef_": matrix})


def test_well_formed_models_of_every_native_kind_pass():
    logistic = LogisticRegression(max_iter=500).fit(X, Y)
    logistic.sparsify()
    for model in (
        make_pipeline(StandardScaler(), DecisionTreeClassifier(random_state=0)).fit(X, Y),
        GradientBoostingClassifier(n_estimators=5, random_state=0).fit(X, Y),
        RandomForestRegressor(n_estimators=5, random_state=0).fit(X, Y),
        KNeighborsClassifier(algorithm="kd_tree").fit(X, Y),
        logistic,
    ):
        loaded = artifacts.load_pickle(pickle.dumps(model, protocol=5))
        assert (loaded.predict(X) == model.predict(X)).all()


def test_the_unchecked_tree_really_crashes_the_process():
    """Why the check exists: the same bytes through the stock unpickler kill the interpreter."""
    data = pickle.dumps(MALFORMED["tree child far out of range"](), protocol=5)
    code = textwrap.dedent(
        """
        import pickle, sys
        from sklearn.datasets import load_iris
        model = pickle.loads(sys.stdin.buffer.read())
        model.predict(load_iris(return_X_y=True)[0][:2])
        """
    )
    done = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True)
    assert done.returncode < 0 or done.returncode == 139
