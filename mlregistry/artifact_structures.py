"""Checks of the native structures inside a deserialised estimator, before it may predict.

The allow-list decides which classes an artifact may name, not what their state holds: a
scikit-learn ``Tree``, ``KDTree`` or scipy sparse matrix restored from crafted state keeps
whatever indexes it was given, and their compiled code reads memory at those indexes without
bounds checks (a tree whose child index is 10**9 crashes the worker with SIGSEGV on its first
predict). Each such structure is therefore checked here the way the library's own builders would
have laid it out; anything else is refused with ArtifactError.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_OBJECTS = 1_000_000


class StructureError(ValueError):
    """The state of a native structure the estimator holds is not one its library builds."""


def _check_tree(tree: Any) -> None:
    # Builders append children after their parent, so child > node holds for every split:
    # that bounds every index and rules out cycles (an endless predict) in one comparison.
    state = tree.__getstate__()
    nodes = state["nodes"]
    count = int(state["node_count"])
    if nodes.ndim != 1 or nodes.shape[0] != count or count < 1:
        raise StructureError("a decision tree's node array does not match its node count")
    value = state["values"]
    if value.shape[0] != count:
        raise StructureError("a decision tree's value array does not match its node count")
    left = nodes["left_child"].astype(np.int64)
    right = nodes["right_child"].astype(np.int64)
    feature = nodes["feature"].astype(np.int64)
    index = np.arange(count, dtype=np.int64)
    leaf = left == -1
    if np.any(leaf != (right == -1)):
        raise StructureError("a decision tree node has exactly one child")
    split = ~leaf
    if np.any((left[split] <= index[split]) | (left[split] >= count)):
        raise StructureError("a decision tree's child index is out of range")
    if np.any((right[split] <= index[split]) | (right[split] >= count)):
        raise StructureError("a decision tree's child index is out of range")
    if np.any((feature[split] < 0) | (feature[split] >= int(tree.n_features))):
        raise StructureError("a decision tree splits on a feature it does not have")


def _check_kd_tree(kd_tree: Any) -> None:
    state = kd_tree.__getstate__()
    data, idx_array, node_data, node_bounds = state[0], state[1], state[2], state[3]
    n_levels, n_nodes = int(state[5]), int(state[6])
    if data.ndim != 2 or idx_array.ndim != 1 or node_data.ndim != 1:
        raise StructureError("a KD-tree's arrays have the wrong dimensions")
    n_samples, n_features = data.shape
    if idx_array.shape[0] != n_samples or node_data.shape[0] != n_nodes or n_nodes < 1:
        raise StructureError("a KD-tree's arrays do not match its sizes")
    if n_nodes != 2**n_levels - 1:
        raise StructureError("a KD-tree's node count does not match its depth")
    if node_bounds.shape != (2, n_nodes, n_features):
        raise StructureError("a KD-tree's bounds do not match its nodes")
    if not np.array_equal(np.sort(idx_array.astype(np.int64)), np.arange(n_samples)):
        raise StructureError("a KD-tree's index array is not a permutation of its rows")
    start = node_data["idx_start"].astype(np.int64)
    end = node_data["idx_end"].astype(np.int64)
    if np.any((start < 0) | (start > end) | (end > n_samples)):
        raise StructureError("a KD-tree node's row range is out of range")
    inner = np.arange(n_nodes) * 2 + 2 >= n_nodes
    if not np.all(node_data["is_leaf"][inner]):
        raise StructureError("a KD-tree node at the last level is not a leaf")


def _check_sparse(matrix: Any) -> None:
    check_format = getattr(matrix, "check_format", None)
    if callable(check_format):
        check_format(full_check=True)
        return
    if matrix.format == "coo":
        rows, cols = matrix.shape
        for axis, bound in zip(matrix.coords, (rows, cols), strict=False):
            if axis.size and (axis.min() < 0 or axis.max() >= bound):
                raise StructureError("a sparse matrix's index is out of range")


def _native_checks() -> dict[type, Any]:
    from scipy import sparse
    from sklearn.neighbors import KDTree
    from sklearn.tree._tree import Tree

    return {
        Tree: _check_tree,
        KDTree: _check_kd_tree,
        sparse.sparray: _check_sparse,
        sparse.spmatrix: _check_sparse,
    }


def check_structures(root: Any) -> None:
    """Walks the objects reachable from `root` (attributes, containers, object arrays) and checks
    each native structure found; StructureError names the first that is not well formed."""
    checks = _native_checks()
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, bool)):
            continue
        seen.add(id(obj))
        if len(seen) > MAX_OBJECTS:
            raise StructureError("the estimator holds too many objects to check")
        for kind, check in checks.items():
            if isinstance(obj, kind):
                try:
                    check(obj)
                except StructureError:
                    raise
                except Exception as exc:
                    raise StructureError(f"a {kind.__name__} is not well formed: {exc}") from None
        if isinstance(obj, np.ndarray):
            if obj.dtype.hasobject:
                stack.extend(obj.ravel().tolist())
            continue
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        state = getattr(obj, "__dict__", None)
        if isinstance(state, dict):
            stack.extend(state.values())
        if isinstance(state, dict) and state.get("tree_") is not None:
            n_features_in = state.get("n_features_in_")
            tree_features = int(getattr(state["tree_"], "n_features", -1))
            if n_features_in is not None and tree_features != int(n_features_in):
                raise StructureError("a decision tree's feature count differs from its estimator's")
