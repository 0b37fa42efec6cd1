"""The Open Inference Protocol (V2 REST) at /v2/: plain JSON per the specification, the binary
tensor data extension, and tritonclient's InferenceServerClient against a live server; answers
equal to scikit-learn in process, through the native serving path."""

import io
import struct

import numpy as np
import orjson
import pytest

from mlregistry import services
from mlregistry.artifacts import load_skops
from predictions.models import PredictionLog
from predictions.services import prediction_log_flush
from tests import factories
from tests.predictions.conftest import IRIS_ROW, iris_estimator, iris_version, promote

FEATURES = factories.IRIS_FEATURES
INFER = "/v2/models/iris/infer"


def _rows(count):
    x, _ = factories.iris_frame()
    return x.iloc[::3].head(count).reset_index(drop=True)


def _infer(api, body, url=INFER, **extra):
    return api.post(url, orjson.dumps(body), content_type="application/json", **extra)


def _per_feature(frame, datatype="FP64", shape_1=False):
    return [
        {
            "name": name,
            "datatype": datatype,
            "shape": [len(frame), 1] if shape_1 else [len(frame)],
            "data": frame[name].tolist(),
        }
        for name in FEATURES
    ]


def _binary_request(inputs, outputs=None, **extra):
    """(body, header length) as the binary tensor data extension frames them."""
    header = {"inputs": [], **extra}
    chunks = []
    for name, array, datatype in inputs:
        data = array.tobytes()
        header["inputs"].append(
            {
                "name": name,
                "datatype": datatype,
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(data)},
            }
        )
        chunks.append(data)
    if outputs is not None:
        header["outputs"] = outputs
    encoded = orjson.dumps(header)
    return encoded + b"".join(chunks), len(encoded)


def _split_answer(response):
    length = int(response["Inference-Header-Content-Length"])
    content = response.content
    return orjson.loads(content[:length]), content[length:]


@pytest.mark.django_db
@pytest.mark.parametrize("count", [1, 6])
@pytest.mark.parametrize("shape_1", [False, True])
def test_json_per_feature_tensors_equal_scikit_learn(client_api, iris_production, count, shape_1):
    frame = _rows(count)
    response = _infer(client_api, {"id": "r-1", "inputs": _per_feature(frame, shape_1=shape_1)})
    assert response.status_code == 200, response.content
    body = response.json()
    estimator = iris_estimator(1.0)
    assert body["model_name"] == "iris" and body["model_version"] == "1" and body["id"] == "r-1"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["predict"] == {
        "name": "predict",
        "datatype": "INT64",
        "shape": [count],
        "data": estimator.predict(frame).tolist(),
    }
    proba = estimator.predict_proba(frame)
    assert outputs["predict_proba"]["shape"] == [count, 3]
    assert outputs["predict_proba"]["datatype"] == "FP64"
    assert outputs["predict_proba"]["data"] == proba.reshape(-1).tolist()


@pytest.mark.django_db
@pytest.mark.parametrize("datatype", ["FP64", "FP32", "INT64", "INT32"])
def test_one_2d_tensor_in_schema_order(client_api, iris_production, datatype):
    frame = _rows(4)
    values = frame.to_numpy()
    if datatype.startswith("INT"):
        values = np.rint(values).astype(np.int64)
    tensor = {"name": "input-0", "datatype": datatype, "shape": [4, 4]}
    nested = {**tensor, "data": values.tolist()}
    flat = {**tensor, "data": values.reshape(-1).tolist()}
    expected = iris_estimator(1.0).predict(values.astype(datatype.lower().replace("fp", "float")))
    for form in (nested, flat):
        body = _infer(client_api, {"inputs": [form], "outputs": [{"name": "predict"}]}).json()
        assert [o["name"] for o in body["outputs"]] == ["predict"]
        assert body["outputs"][0]["data"] == expected.tolist()


@pytest.mark.django_db
def test_binary_tensors_in_and_out(client_api, iris_production):
    frame = _rows(6)
    matrix = frame.to_numpy(dtype="<f8")
    body, length = _binary_request(
        [("input-0", matrix, "FP64")],
        outputs=[
            {"name": "predict_proba", "parameters": {"binary_data": True}},
            {"name": "predict"},
        ],
        id="b-1",
    )
    response = client_api.post(
        INFER,
        body,
        content_type="application/octet-stream",
        HTTP_INFERENCE_HEADER_CONTENT_LENGTH=str(length),
    )
    assert response.status_code == 200, response.content
    header, binary = _split_answer(response)
    assert header["id"] == "b-1"
    proba_out, predict_out = header["outputs"]
    estimator = iris_estimator(1.0)
    assert proba_out["parameters"] == {"binary_data_size": 6 * 3 * 8}
    assert "data" not in proba_out
    proba = np.frombuffer(binary, dtype="<f8").reshape(6, 3)
    assert np.array_equal(proba, estimator.predict_proba(matrix))
    assert predict_out["data"] == estimator.predict(matrix).tolist()


@pytest.mark.django_db
def test_binary_data_output_for_all_outputs_and_per_feature_fp32(client_api, iris_production):
    frame = _rows(3)
    inputs = [(name, frame[name].to_numpy(dtype="<f4"), "FP32") for name in FEATURES]
    body, length = _binary_request(inputs, parameters={"binary_data_output": True})
    response = client_api.post(
        INFER,
        body,
        content_type="application/octet-stream",
        HTTP_INFERENCE_HEADER_CONTENT_LENGTH=str(length),
    )
    assert response.status_code == 200, response.content
    header, binary = _split_answer(response)
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert sizes == [3 * 8, 3 * 3 * 8]
    x = np.column_stack([a for _, a, _ in inputs]).astype(np.float64)
    labels = np.frombuffer(binary[:24], dtype="<i8")
    assert labels.tolist() == iris_estimator(1.0).predict(x).tolist()


@pytest.fixture
def mixed_model(db):
    """A model whose schema has an integer, a boolean and a string feature."""
    import pandas as pd
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder
    from skops import io as sio

    frame = pd.DataFrame(
        {
            "age": [20, 30, 40, 50, 60, 70] * 5,
            "member": [True, False] * 15,
            "city": ["a", "b", "c"] * 10,
        }
    )
    target = (frame["age"] > 40).astype(int)
    pipeline = make_pipeline(
        make_column_transformer(
            (OneHotEncoder(handle_unknown="ignore"), ["city"]), remainder="passthrough"
        ),
        LogisticRegression(),
    ).fit(frame, target)
    model = factories.registered_model_create("mixed")
    schema = [
        {"name": "age", "type": "integer"},
        {"name": "member", "type": "boolean"},
        {"name": "city", "type": "string"},
    ]
    data = sio.dumps(pipeline)
    trusted = sio.get_untrusted_types(data=data)
    version = services.model_version_create(
        model=model, artifact=io.BytesIO(data), actor="tests", input_schema=schema
    )
    promote(version)
    return sio.loads(data, trusted=trusted), frame.head(4)


@pytest.mark.django_db
def test_int_bool_and_bytes_tensors_where_the_schema_allows(client_api, mixed_model):
    estimator, frame = mixed_model
    inputs = [
        {"name": "age", "datatype": "INT64", "shape": [4], "data": frame["age"].tolist()},
        {"name": "member", "datatype": "BOOL", "shape": [4], "data": frame["member"].tolist()},
        {"name": "city", "datatype": "BYTES", "shape": [4], "data": frame["city"].tolist()},
    ]
    url = "/v2/models/mixed/infer"
    body = _infer(client_api, {"inputs": inputs}, url).json()
    assert body["outputs"][0]["data"] == estimator.predict(frame).tolist()
    binary_inputs = [
        ("age", frame["age"].to_numpy(dtype="<i8"), "INT64"),
        ("member", frame["member"].to_numpy(dtype=np.bool_), "BOOL"),
    ]
    encoded, length = _binary_request(binary_inputs)
    city = b"".join(struct.pack("<I", len(c)) + c.encode() for c in frame["city"])
    header = orjson.loads(encoded[:length])
    header["inputs"].append(
        {
            "name": "city",
            "datatype": "BYTES",
            "shape": [4],
            "parameters": {"binary_data_size": len(city)},
        }
    )
    header_bytes = orjson.dumps(header)
    response = client_api.post(
        url,
        header_bytes + encoded[length:] + city,
        content_type="application/octet-stream",
        HTTP_INFERENCE_HEADER_CONTENT_LENGTH=str(len(header_bytes)),
    )
    assert response.status_code == 200, response.content
    assert response.json()["outputs"][0]["data"] == estimator.predict(frame).tolist()
    # The schema decides which datatypes fit: a string where an integer belongs is refused.
    wrong = [{**inputs[0], "datatype": "BYTES", "data": ["x"] * 4}, *inputs[1:]]
    refused = _infer(client_api, {"inputs": wrong}, url)
    assert refused.status_code == 400 and "age" in refused.json()["error"]


@pytest.mark.django_db
def test_regressor_has_predict_only(client_api):
    from sklearn.datasets import load_diabetes

    model = factories.registered_model_create("diabetes", task="regression")
    version = services.model_version_create(
        model=model, artifact=io.BytesIO(factories.diabetes_regressor_bytes()), actor="tests"
    )
    promote(version)
    frame = load_diabetes(as_frame=True).data.head(5)
    tensor = {"name": "x", "datatype": "FP64", "shape": [5, 10], "data": frame.to_numpy().tolist()}
    body = _infer(client_api, {"inputs": [tensor]}, "/v2/models/diabetes/infer").json()
    expected = load_skops(factories.diabetes_regressor_bytes()).predict(frame).tolist()
    assert body["outputs"] == [
        {"name": "predict", "datatype": "FP64", "shape": [5], "data": expected}
    ]
    asked = _infer(
        client_api,
        {"inputs": [tensor], "outputs": [{"name": "predict_proba"}]},
        "/v2/models/diabetes/infer",
    )
    assert asked.status_code == 400 and "predict_proba" in asked.json()["error"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "request_body",
    [
        {},
        {"inputs": []},
        {"inputs": [{"name": "x", "datatype": "FP64", "shape": [2, 4], "data": [1.0] * 7}]},
        {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 3], "data": [1.0] * 3}]},
        {"inputs": [{"name": "x", "datatype": "COMPLEX", "shape": [1, 4], "data": [1] * 4}]},
        {"inputs": [{"name": "x", "datatype": "INT64", "shape": [1, 4], "data": [1.5] * 4}]},
        {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": ["a"] * 4}]},
        {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": [[1, 2], [3]]}]},
        {"inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 4], "data": [1.0] * 4}]},
        {"inputs": [{"name": "x", "datatype": "FP64", "shape": [2**62, 2**62, 4], "data": []}]},
        # A shape holding no values, but too large for numpy to make even empty.
        {"inputs": [{"name": "x", "datatype": "FP64", "shape": [2**62, 0], "data": []}]},
        {"inputs": [{"name": "x", "datatype": "FP64", "shape": [0, 2**63], "data": []}]},
        {
            "inputs": [
                {"name": "x", "datatype": "FP64", "shape": [2**31 - 1, 2**31 - 1, 0], "data": []}
            ]
        },
        {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1] * 9 + [4], "data": [1.0] * 4}]},
        {"inputs": [{"name": "x", "datatype": "FP64", "shape": [0, 4], "data": []}]},
        {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 1, 4], "data": [1.0] * 4}]},
        {"inputs": _per_feature(_rows(2))[:3]},
        {"inputs": [*_per_feature(_rows(2))[:3], _per_feature(_rows(3))[3]]},
        {"inputs": [*_per_feature(_rows(1)), {**_per_feature(_rows(1))[0], "name": "extra"}]},
        {"inputs": _per_feature(_rows(1)), "outputs": [{"name": "predict_log_proba"}]},
        {
            "inputs": [
                {**_per_feature(_rows(1))[0], "data": [float("nan")]},
                *_per_feature(_rows(1))[1:],
            ]
        },
    ],
)
def test_bad_requests_are_400_in_the_protocols_error_form(
    client_api, iris_production, request_body
):
    body = orjson.dumps(request_body, option=orjson.OPT_SERIALIZE_NUMPY).replace(b"null", b"NaN")
    response = client_api.post(INFER, body, content_type="application/json")
    assert response.status_code == 400, response.content
    error = response.json()
    assert list(error) == ["error"] and isinstance(error["error"], str) and error["error"]


@pytest.mark.django_db
def test_malformed_binary_framing_is_400(client_api, iris_production):
    body, length = _binary_request([("x", _rows(2).to_numpy(dtype="<f8"), "FP64")])
    for header_length, payload in [
        ("abc", body),
        ("\u00b2", body),  # a superscript two: str.isdigit() says yes, int() refuses
        (str(len(body) + 1), body),
        (str(length), body[:-8]),
        (str(length), body + b"\0" * 8),
    ]:
        response = client_api.post(
            INFER,
            payload,
            content_type="application/octet-stream",
            HTTP_INFERENCE_HEADER_CONTENT_LENGTH=header_length,
        )
        assert response.status_code == 400, (header_length, response.content)
        assert set(response.json()) == {"error"}


@pytest.mark.django_db
def test_statuses_are_the_native_ones(anon_api, client_api, iris_model):
    request_body = {"inputs": _per_feature(_rows(1))}
    unauthenticated = _infer(anon_api, request_body)
    assert unauthenticated.status_code == 401 and set(unauthenticated.json()) == {"error"}
    assert _infer(client_api, request_body, "/v2/models/nope/infer").status_code == 404
    iris_version(iris_model)
    assert _infer(client_api, request_body).status_code == 409  # no production version
    pinned = _infer(client_api, request_body, "/v2/models/iris/versions/1/infer")
    assert pinned.status_code == 200 and pinned.json()["model_version"] == "1"
    assert client_api.get("/v2/models/iris/ready").status_code == 409
    # Without production, metadata describes the newest version that can serve.
    assert client_api.get("/v2/models/iris").json()["parameters"] == {
        "version": "1",
        "stage": "none",
    }
    assert client_api.get("/v2/models/iris/versions/1/ready").status_code == 200
    assert client_api.get("/v2/models/iris/versions/7/ready").status_code == 404


@pytest.mark.django_db
def test_health_and_metadata(anon_api, client_api, iris_production):
    assert anon_api.get("/v2/health/live").status_code == 200
    assert anon_api.get("/v2/health/ready").status_code == 200
    assert anon_api.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    assert anon_api.get("/v2/models/iris").status_code == 401
    metadata = client_api.get("/v2/models/iris").json()
    assert metadata["name"] == "iris" and metadata["versions"] == ["1"]
    assert metadata["platform"] == "scikit-learn"
    assert metadata["inputs"] == [
        {"name": name, "datatype": "FP64", "shape": [-1]} for name in FEATURES
    ]
    assert metadata["outputs"] == [
        {"name": "predict", "datatype": "INT64", "shape": [-1]},
        {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]},
    ]
    assert client_api.get("/v2/models/iris/versions/1").json()["inputs"] == metadata["inputs"]
    assert client_api.get("/v2/models/iris/ready").json() == {"name": "iris", "ready": True}


@pytest.mark.django_db
def test_infer_is_logged_and_single_rows_are_cached(client_api, iris_production, settings):
    settings.PREDICTION_LOG_SAMPLE_RATE = 1.0
    request_body = {"inputs": _per_feature(_rows(1))}
    first, second = _infer(client_api, request_body), _infer(client_api, request_body)
    assert first.json()["outputs"] == second.json()["outputs"]
    batch = _infer(client_api, {"inputs": _per_feature(_rows(3))})
    prediction_log_flush()
    ids = [first["X-Request-ID"], second["X-Request-ID"], batch["X-Request-ID"]]
    logged = list(
        PredictionLog.objects.filter(request_id__in=ids)
        .order_by("id")
        .values_list("cached", "row_index")
    )
    assert logged == [(False, 0), (True, 0), (False, 0), (False, 1), (False, 2)]


@pytest.mark.django_db
def test_the_predict_throttle_counts_infer(
    client_api, iris_production, settings, throttle_window_room
):
    rates = {k: None for k in settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]}
    rates["predict"] = "1/min"
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    throttle_window_room(60)
    request_body = {"inputs": _per_feature(_rows(1))}
    assert _infer(client_api, request_body).status_code == 200
    limited = _infer(client_api, request_body)
    assert limited.status_code == 429 and limited["Retry-After"]
    assert set(limited.json()) == {"error"}


# --- tritonclient against a live server -----------------------------------------------------


@pytest.fixture
def live_models(live_server, transactional_db):
    """iris (classifier) and diabetes (regressor) in production, and a client token."""
    iris = factories.registered_model_create("iris")
    promote(iris_version(iris, c=1.0))
    diabetes = factories.registered_model_create("diabetes", task="regression")
    promote(
        services.model_version_create(
            model=diabetes,
            artifact=io.BytesIO(factories.diabetes_regressor_bytes()),
            actor="tests",
        )
    )
    token = factories.token_create(factories.user_create("triton"))
    return live_server.url.removeprefix("http://"), {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("count", [1, 40])
def test_tritonclient_against_a_live_server(live_models, binary, count):
    httpclient = pytest.importorskip("tritonclient.http")
    from sklearn.datasets import load_diabetes

    url, headers = live_models
    client = httpclient.InferenceServerClient(url=url)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("iris", headers=headers)
        metadata = client.get_model_metadata("iris", headers=headers)
        assert [i["name"] for i in metadata["inputs"]] == FEATURES

        x = _rows(count).to_numpy(dtype=np.float64)
        matrix = httpclient.InferInput("input-0", list(x.shape), "FP64")
        matrix.set_data_from_numpy(x, binary_data=binary)
        result = client.infer("iris", [matrix], headers=headers, request_id="t-1")
        estimator = iris_estimator(1.0)
        assert result.get_response()["id"] == "t-1"
        assert np.array_equal(result.as_numpy("predict"), estimator.predict(x))
        assert np.array_equal(result.as_numpy("predict_proba"), estimator.predict_proba(x))

        per_feature = []
        for index, name in enumerate(FEATURES):
            tensor = httpclient.InferInput(name, [count, 1], "FP32")
            tensor.set_data_from_numpy(
                x[:, index : index + 1].astype(np.float32), binary_data=binary
            )
            per_feature.append(tensor)
        outputs = [httpclient.InferRequestedOutput("predict_proba", binary_data=binary)]
        result = client.infer("iris", per_feature, outputs=outputs, headers=headers)
        x32 = x.astype(np.float32).astype(np.float64)
        assert result.as_numpy("predict") is None
        assert np.array_equal(result.as_numpy("predict_proba"), estimator.predict_proba(x32))

        frame = load_diabetes(as_frame=True).data.head(count)
        values = frame.to_numpy(dtype=np.float64)
        tensor = httpclient.InferInput("x", list(values.shape), "FP64")
        tensor.set_data_from_numpy(values, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput("predict", binary_data=binary)]
        result = client.infer("diabetes", [tensor], outputs=outputs, headers=headers)
        expected = load_skops(factories.diabetes_regressor_bytes()).predict(frame)
        assert np.array_equal(result.as_numpy("predict"), expected)
    finally:
        client.close()


def test_tritonclient_sees_errors_and_refused_tokens(live_models):
    httpclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    url, headers = live_models
    client = httpclient.InferenceServerClient(url=url)
    try:
        tensor = httpclient.InferInput("input-0", [1, 3], "FP64")
        tensor.set_data_from_numpy(np.ones((1, 3)))
        with pytest.raises(InferenceServerException) as refused:
            client.infer("iris", [tensor], headers=headers)
        assert refused.value.status() == "400" and "4 features" in refused.value.message()
        with pytest.raises(InferenceServerException) as unauthenticated:
            client.infer("iris", [tensor], headers={"Authorization": "Bearer nope"})
        assert unauthenticated.value.status() == "401"
        assert not client.is_model_ready("nope", headers=headers)
    finally:
        client.close()


def test_iris_row_constant_is_the_first_feature_order():
    assert list(IRIS_ROW) == FEATURES


@pytest.mark.django_db
@pytest.mark.parametrize("request_id", [{"a": 1}, 7, ["x"], None])
def test_a_request_id_that_is_not_a_string_is_refused_naming_it(
    client_api, iris_production, request_id
):
    response = _infer(client_api, {"id": request_id, "inputs": _per_feature(_rows(1))})
    assert response.status_code == 400
    assert "id" in response.json()["error"]


@pytest.mark.django_db
def test_content_type_and_accept_follow_the_api_rules(client_api, iris_production):
    """JSON in any case and with parameters, text/plain (tritonclient's), or no Content-Type;
    another charset or type is a 415 naming what to send.
    A client may accept application/octet-stream (binary outputs); errors are JSON anyway."""
    body = orjson.dumps({"inputs": _per_feature(_rows(2))})
    for content_type in (
        "application/json",
        "Application/JSON; charset=UTF-8",
        "text/plain",
        "application/x-www-form-urlencoded",  # curl -d, as Triton's examples send it
        None,
    ):
        extra = {} if content_type is None else {"content_type": content_type}
        answer = client_api.generic("POST", INFER, body, **extra)
        assert answer.status_code == 200, (content_type, answer.content)
    for content_type, says in (
        ("application/json; charset=latin-1", "utf-8"),
        ("text/plain; charset=utf-16", "utf-8"),
        ("application/xml", "application/json"),
        ("multipart/form-data; boundary=x", "application/json"),
    ):
        refused = client_api.post(INFER, body, content_type=content_type)
        assert refused.status_code == 415, content_type
        assert says in refused.json()["error"]

    binary = orjson.dumps(
        {"inputs": _per_feature(_rows(2)), "parameters": {"binary_data_output": True}}
    )
    answer = client_api.post(
        INFER, binary, content_type="application/json", HTTP_ACCEPT="application/octet-stream"
    )
    assert answer.status_code == 200, answer.content
    error = client_api.post(
        INFER, b"{}", content_type="application/json", HTTP_ACCEPT="application/octet-stream"
    )
    assert error.status_code == 400 and error["Content-Type"].startswith("application/json")
    assert set(error.json()) == {"error"}
    # Routes that answer JSON only do not claim another type.
    metadata = client_api.get("/v2/models/iris", HTTP_ACCEPT="application/octet-stream")
    assert metadata.status_code == 406
