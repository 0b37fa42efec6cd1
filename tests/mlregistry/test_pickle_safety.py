"""No pickle runs code: gadgets under numpy, scipy, scikit-learn, joblib and builtins are refused
at upload (static scan) and at load (restricted unpickler), each proven not to run by a canary
file; and the allow-list itself is exact, derived, and never admits what picklescan flags."""

from __future__ import annotations

import builtins
import hashlib
import io
import pickle
import re
import subprocess
import sys
from pathlib import Path

import joblib
import numpy
import pytest
import scipy
import sklearn
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from mlregistry import artifacts
from mlregistry.models import ModelVersion
from mlregistry.pickle_globals import PICKLE_ALLOWED_GLOBALS
from mlregistry.selectors import routing_invalidate
from predictions.loader import model_cache
from tests import factories

ROOT = Path(__file__).resolve().parents[2]
IRIS_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


@pytest.fixture(autouse=True)
def _serving_state(settings):
    """As tests/predictions does: no log flusher thread (it would write outside the test's
    transaction), no model cached from another test."""
    from predictions.logbuffer import prediction_log_buffer

    settings.PREDICTION_LOG_FLUSH_SECONDS = 0
    settings.PREDICTION_LOG_FLUSH_ROWS = 100_000
    model_cache.clear()
    prediction_log_buffer.clear()
    yield
    prediction_log_buffer.clear()


class Call:
    """Pickles as `func(*args)`: the shape of every gadget (a REDUCE of a global)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)

    def __call__(self, *args):  # pickle wants a callable when a Call is itself the callee
        raise AssertionError("never called while pickling")


def _gadgets(canary: Path) -> dict[str, object]:
    """Payloads that run code or write a file when a stock unpickler loads them."""
    from numpy.testing._private.utils import runstring
    from scipy.io import savemat
    from sklearn.utils._testing import assert_run_python_script_without_output

    touch = f"touch {canary}"
    write = f"open({str(canary)!r}, 'w').close()"
    return {
        # The payload of the report: the wildcard admitted numpy.*.
        "numpy runstring + os.system": Call(runstring, f"import os; os.system({touch!r})", {}),
        "builtins.exec": Call(builtins.exec, write),
        "builtins.eval": Call(builtins.eval, write.replace(".close()", "")),
        "builtins getattr(__import__('os'), 'system')": Call(
            Call(builtins.getattr, Call(builtins.__import__, "os"), "system"), touch
        ),
        "numpy.savetxt writes a file": Call(numpy.savetxt, str(canary), [1.0]),
        "scipy.io.savemat writes a file": Call(savemat, str(canary), {}),
        "joblib.dump writes a file": Call(joblib.dump, [1], str(canary)),
        "sklearn runs a python subprocess": Call(
            assert_run_python_script_without_output, write, ".*"
        ),
    }


GADGETS = list(_gadgets(Path("/nonexistent")))


def _gadget_bytes(name: str, canary: Path) -> bytes:
    return pickle.dumps(_gadgets(canary)[name], protocol=4)


@pytest.mark.parametrize("name", GADGETS)
def test_each_gadget_really_runs_under_a_stock_unpickler(name, tmp_path):
    """The payloads are live: a plain pickle.loads (in a child process) does run them."""
    canary = tmp_path / "canary"
    payload = tmp_path / "payload.pkl"
    payload.write_bytes(_gadget_bytes(name, canary))
    subprocess.run(
        [sys.executable, "-c", f"import pickle; pickle.loads(open({str(payload)!r}, 'rb').read())"],
        check=False,
        capture_output=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert canary.exists(), name


@pytest.mark.django_db
@pytest.mark.parametrize("name", GADGETS)
def test_each_gadget_is_refused_at_upload_and_never_runs(name, tmp_path, iris_model):
    canary = tmp_path / "canary"
    uploader = factories.staff_create("pickler", extra_perms=["upload_pickle"])
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.token_create(uploader)}")
    response = api.post(
        "/api/v1/models/iris/versions/",
        {
            "artifact": SimpleUploadedFile("m.pkl", _gadget_bytes(name, canary)),
            "artifact_format": "joblib",
            "input_schema": '["a"]',
        },
        format="multipart",
    )
    assert response.status_code == 400, response.json()
    assert response.json()["error"]["type"] == "artifact_error"
    assert "allow-list" in response.json()["error"]["message"]
    assert not canary.exists()
    assert not ModelVersion.objects.exists()


def _stored_behind_upload(version: ModelVersion, data: bytes) -> ModelVersion:
    """Puts bytes in the store under their SHA-256 and points the version at them, as a
    tampered database or a restored backup could: no upload check ever saw them."""
    sha256 = hashlib.sha256(data).hexdigest()
    name = storages["artifacts"].save(f"sha256/{sha256[:2]}/{sha256}.joblib", ContentFile(data))
    ModelVersion.objects.filter(pk=version.pk).update(
        artifact=name, artifact_format="joblib", artifact_sha256=sha256, artifact_size=len(data)
    )
    routing_invalidate(version.model.name)
    version.refresh_from_db()
    return version


@pytest.mark.django_db
@pytest.mark.parametrize("name", GADGETS)
def test_each_gadget_stored_behind_the_upload_is_refused_at_load(
    name, tmp_path, iris_model, client_api
):
    canary = tmp_path / "canary"
    model_cache.clear()
    version = _stored_behind_upload(
        factories.version_create(iris_model), _gadget_bytes(name, canary)
    )
    for _ in range(2):  # refused every time, never cached, never a 500
        response = client_api.post(
            f"/api/v1/models/iris/versions/{version.version}/predict",
            {"features": IRIS_ROW},
            format="json",
        )
        assert response.status_code == 503, response.content
        assert response.json()["error"]["type"] == "artifact_invalid"
    assert model_cache.peek(version.pk, version.artifact_sha256) is None
    with pytest.raises(artifacts.ArtifactInvalidError):
        artifacts.load_version_estimator(version)
    assert not canary.exists()


@pytest.mark.django_db
def test_a_pickle_that_is_not_an_estimator_is_refused_at_load_and_not_cached(
    iris_model, client_api
):
    model_cache.clear()
    version = _stored_behind_upload(
        factories.version_create(iris_model), pickle.dumps(numpy.arange(3.0), protocol=5)
    )
    for _ in range(2):
        response = client_api.post(
            f"/api/v1/models/iris/versions/{version.version}/predict",
            {"features": IRIS_ROW},
            format="json",
        )
        assert response.status_code == 503
        assert response.json()["error"]["type"] == "artifact_invalid"
        assert "not an estimator with predict()" in response.json()["error"]["message"]
    assert len(model_cache) == 0


@pytest.mark.django_db
def test_a_stored_pickle_of_an_allowed_model_still_serves(iris_model, client_api):
    from sklearn.ensemble import RandomForestClassifier

    x, y = factories.iris_frame()
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(x, y)
    model_cache.clear()
    version = _stored_behind_upload(factories.version_create(iris_model), pickle.dumps(forest))
    response = client_api.post(
        f"/api/v1/models/iris/versions/{version.version}/predict",
        {"features": IRIS_ROW},
        format="json",
    )
    assert response.status_code == 200, response.json()


# --- the allow-list ----------------------------------------------------------------------------


def test_committed_allow_list_is_what_the_libraries_need():
    """Re-derives the list (scripts/pickle_allowlist.py --check): an upgrade that changes the
    globals fails here, so the list is reviewed, never widened by hand."""
    result = subprocess.run(
        [sys.executable, "scripts/pickle_allowlist.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_allow_list_is_exact_and_never_admits_what_picklescan_flags():
    for module, name in PICKLE_ALLOWED_GLOBALS:
        assert "*" not in module + name
        assert not artifacts.pickle_global_dangerous(module, name)
    # The gadget of the report, and its protocol-2 spelling, are refused whatever the list says.
    assert artifacts.pickle_global_dangerous("numpy.testing._private.utils", "runstring")
    assert artifacts.pickle_global_dangerous("__builtin__", "eval")
    assert not artifacts.pickle_global_allowed("numpy.testing._private.utils", "runstring")


def test_picklescan_verdict_function_behaves_as_relied_on():
    """Pins picklescan's private verdict function (used for one global at a time)."""
    from picklescan.scanner import SafetyLevel, _build_scan_result_from_raw_globals

    result = _build_scan_result_from_raw_globals({("os", "system"), ("numpy", "dtype")}, "t")
    verdicts = {(g.module, g.name): g.safety for g in result.globals}
    assert verdicts[("os", "system")] == SafetyLevel.Dangerous
    assert verdicts[("numpy", "dtype")] != SafetyLevel.Dangerous


def test_protocol_2_names_are_mapped_like_the_stock_unpickler_maps_them():
    from sklearn.linear_model import LogisticRegression

    x, y = factories.iris_frame()
    model = LogisticRegression(max_iter=500).fit(x.to_numpy(), y)
    loaded = artifacts.load_pickle(pickle.dumps(model, protocol=2))
    assert (loaded.predict(x.to_numpy()) == model.predict(x.to_numpy())).all()
    # Python 2 spellings (__builtin__, copy_reg) name the same exact globals.
    assert artifacts.load_pickle(b"\x80\x02c__builtin__\ndict\n)R.") == {}
    with pytest.raises(artifacts.ArtifactError, match=r"__builtin__\.eval"):
        artifacts.load_pickle(b"\x80\x02c__builtin__\neval\nX\x01\x00\x00\x001\x85R.")


# --- every callable that reaches exec, eval, processes or files --------------------------------

# A call that runs code, imports, starts a process or touches files, as source text.
RISKY_CALL = re.compile(
    rb"(?<![\w.])(exec|eval|compile|open|__import__|import_module|Popen|check_output|check_call"
    rb"|run_path|run_module|system)\("
    rb"|(?<![\w.])(os|subprocess|sp|pickle|runpy|shutil|importlib|np|numpy|joblib)"
    rb"\.(system|popen|run|call|spawn\w*|exec\w*|load|loads|Popen|check_output|check_call"
    rb"|rmtree|remove|unlink|copy\w*|move|import_module|save\w*|memmap|fromfile|dump)\("
)
DEFINITION = re.compile(rb"^( *)(?:async +)?(def|class) +(\w+)")


def _risky_callables() -> set[tuple[str, str]]:
    """(module, name) of every module-level function, class and method in numpy, scipy,
    scikit-learn and joblib whose code calls exec/eval/compile/open/import, starts a process or
    writes files. Read line by line from the source (parsing every file would take a minute),
    never imported; a false positive only refuses one more name."""
    found: set[tuple[str, str]] = set()
    for package in (numpy, scipy, sklearn, joblib):
        root = Path(package.__file__).parent
        for path in root.rglob("*.py"):
            source = path.read_bytes()
            if not RISKY_CALL.search(source):
                continue
            module = ".".join(path.relative_to(root.parent).with_suffix("").parts)
            module = module.removesuffix(".__init__")
            scope: list[tuple[int, str]] = []  # (indent, qualified name) of enclosing defs
            for line in source.splitlines():
                definition = DEFINITION.match(line)
                if definition:
                    indent = len(definition.group(1))
                    while scope and scope[-1][0] >= indent:
                        scope.pop()
                    parent = scope[-1][1] + "." if scope else ""
                    scope.append((indent, parent + definition.group(3).decode()))
                    continue
                stripped = line.lstrip()
                if stripped and not stripped.startswith(b"#"):
                    while scope and scope[-1][0] >= len(line) - len(stripped):
                        scope.pop()
                if scope and RISKY_CALL.search(line):
                    qualified = scope[-1][1]
                    parts = qualified.split(".")
                    # The top-level callable and every enclosing class or method up to it.
                    found.update((module, ".".join(parts[: i + 1])) for i in range(len(parts)))
    return found


RISKY_BUILTINS = [
    "exec",
    "eval",
    "compile",
    "open",
    "__import__",
    "getattr",
    "setattr",
    "delattr",
    "globals",
    "locals",
    "vars",
    "input",
    "breakpoint",
    "print",
    "help",
    "memoryview",
    "type",
    "super",
    "classmethod",
    "staticmethod",
    "property",
    "object",
]


def _global_reduce(module: str, name: str) -> bytes:
    encoded = [part.encode() for part in (module, name)]
    return (
        b"\x80\x04"
        + b"\x8c"
        + bytes([len(encoded[0])])
        + encoded[0]
        + b"\x8c"
        + bytes([len(encoded[1])])
        + encoded[1]
        + b"\x93)R."  # STACK_GLOBAL, EMPTY_TUPLE, REDUCE, STOP
    )


def test_every_callable_that_reaches_code_or_files_is_refused_by_scan_and_loader():
    risky = _risky_callables() | {("builtins", name) for name in RISKY_BUILTINS}
    assert len(risky) > 200  # the walk found the gadgets (hundreds across these packages)
    admitted = sorted(f"{m}.{n}" for m, n in risky if artifacts.pickle_global_allowed(m, n))
    assert admitted == []
    for module, name in sorted(risky):
        data = _global_reduce(module, name)
        with pytest.raises(artifacts.ArtifactError, match="allow-list"):
            artifacts.scan_pickle(data)
        with pytest.raises(artifacts.ArtifactError):
            artifacts.load_pickle(data)
        with pytest.raises(pickle.UnpicklingError, match="not on the allow-list"):
            artifacts._RestrictedUnpickler(io.BytesIO(data)).load()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # scipy's lazy deprecated modules
def test_only_listed_names_of_the_packages_top_levels_and_builtins_are_admitted():
    """Public aliases (numpy.load, numpy.savetxt, joblib.load, scipy.io.loadmat) are other
    names for the walked definitions: exact names mean none of them is admitted either."""
    import scipy.io

    for module in (builtins, numpy, scipy, scipy.io, sklearn, joblib):
        admitted = {
            name
            for name in dir(module)
            if callable(getattr(module, name, None))
            and artifacts.pickle_global_allowed(module.__name__, name)
        }
        assert admitted == {n for m, n in PICKLE_ALLOWED_GLOBALS if m == module.__name__}
    for name in ("load", "savetxt", "fromfile", "memmap"):
        assert not artifacts.pickle_global_allowed("numpy", name)
    assert {n for m, n in PICKLE_ALLOWED_GLOBALS if m == "builtins"} <= {"bytes", "dict", "slice"}


def test_a_refused_global_is_never_even_imported():
    """find_class refuses before importing: a gadget's module never runs its import code."""
    sys.modules.pop("numpy.f2py", None)
    with pytest.raises(pickle.UnpicklingError):
        artifacts._RestrictedUnpickler(io.BytesIO(_global_reduce("numpy.f2py", "run_main"))).load()
    assert "numpy.f2py" not in sys.modules
