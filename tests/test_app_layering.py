"""The apps depend on each other in one direction only: a cycle between two apps (or a longer
one) means neither can be read, tested or replaced without the other. A cycle is broken with a
signal, a registry of hooks, or by moving the code to the app that owns it."""

from __future__ import annotations

import ast
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ("config", "mlregistry", "predictions", "quality", "backups")


def app_imports(root: Path = ROOT) -> dict[tuple[str, str], list[str]]:
    """(importing app, imported app) -> ["path:line module", ...] over every module of the
    apps, migrations included (a migration importing another app's code ties them too), and
    imports inside functions included (a deferred import is still a dependency)."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for app in APPS:
        for path in sorted((root / app).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    target = module.split(".")[0]
                    if target in APPS and target != app:
                        where = f"{path.relative_to(root)}:{node.lineno} {module}"
                        edges[(app, target)].append(where)
    return edges


def cycles(edges: dict[tuple[str, str], list[str]]) -> list[list[str]]:
    """Every elementary cycle of the app graph, each as [a, b, ..., a], smallest app first."""
    graph: dict[str, set[str]] = defaultdict(set)
    for source, target in edges:
        graph[source].add(target)
    found = []

    def walk(start: str, node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt == start:
                found.append([*path, start])
            elif nxt not in path and nxt > start:
                walk(start, nxt, [*path, nxt])

    for start in sorted(graph):
        walk(start, start, [start])
    return found


def test_no_two_apps_import_each_other():
    edges = app_imports()
    report = []
    for cycle in cycles(edges):
        report.append(" -> ".join(cycle))
        for source, target in pairwise(cycle):
            report.extend(f"    {where}" for where in edges[(source, target)])
    assert not report, "import cycles between apps:\n" + "\n".join(report)


def test_the_check_finds_a_cycle_hidden_in_a_function(tmp_path):
    for app in APPS:
        (tmp_path / app).mkdir()
    (tmp_path / "quality" / "a.py").write_text("import mlregistry.models\n")
    (tmp_path / "mlregistry" / "b.py").write_text(
        "def f():\n    from quality.models import Dataset\n"
    )
    (tmp_path / "backups" / "c.py").write_text("from .d import x\nfrom config import errors\n")
    edges = app_imports(tmp_path)
    assert cycles(edges) == [["mlregistry", "quality", "mlregistry"]]
    assert edges[("mlregistry", "quality")] == ["mlregistry/b.py:2 quality.models"]
