"""Every documented operation, run against a live server with real models, and every answer
(errors included) checked against the schema the server publishes: the status is documented,
the body matches it (schemathesis' response_schema_conformance), X-Request-ID is there, and
429/503 carry Retry-After."""

from __future__ import annotations

import hashlib
import io
import json

import httpx
import pytest
import schemathesis
import skops.io as sio
from django.conf import settings as django_settings
from django.contrib.auth.models import Permission

from mlregistry import services
from mlregistry.storage import get_artifact_storage
from tests import factories
from tests.live import IRIS_ROW, iris_margin_classifier, iris_named_classifier

pytestmark = pytest.mark.django_db(transaction=True)
METHODS = {"get", "put", "post", "patch", "delete"}


class Recorder:
    def __init__(self) -> None:
        self.responses: list[httpx.Response] = []

    def __call__(self, response: httpx.Response) -> None:
        response.read()
        response.request.read()  # multipart bodies stream: schemathesis reads them back
        self.responses.append(response)


def _client(url: str, token: str | None, recorder: Recorder) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, event_hooks={"response": [recorder]})


def _broken_model():
    """A model whose stored artifact no longer has its registered SHA-256 (never loaded)."""
    model = factories.registered_model_create("broken")
    version = services.model_version_create(
        model=model, artifact=io.BytesIO(sio.dumps(iris_margin_classifier())), actor="tests"
    )
    services.model_version_transition(version=version, stage="production", actor="tests")
    with open(get_artifact_storage().path(version.artifact.name), "ab") as file:
        file.write(b"!")


def test_every_operation_answers_as_documented(live_world, settings, throttle_window_room):
    staff_user = live_world.staff_user
    staff_user.user_permissions.add(
        *Permission.objects.filter(
            codename__in=[
                "add_dataset",
                "add_trainingjob",
                "add_batchjob",
                "cancel_batchjob",
                "view_webhook",
                "add_webhook",
                "change_webhook",
                "delete_webhook",
            ]
        )
    )
    recorder = Recorder()
    url = live_world.url
    staff = _client(url, live_world.staff, recorder)
    client = _client(url, live_world.client, recorder)
    anon = _client(url, None, recorder)
    raw = staff.get("/api/schema/", params={"format": "json"}).json()
    recorder.responses.clear()  # the schema itself is not an operation of the API
    schema = schemathesis.openapi.from_dict(raw)
    x, y = factories.iris_frame()
    csv = x.assign(species=y).to_csv(index=False).encode()
    named = sio.dumps(iris_named_classifier())

    # Operations endpoints.
    assert anon.get("/health").status_code == 200
    assert anon.get("/health/ready").status_code == 200
    assert anon.get("/metrics").status_code == 200
    _broken_model()  # readiness would report it (503) from here on

    # Registered models.
    assert staff.get("/api/v1/models/").status_code == 200
    assert anon.get("/api/v1/models/").status_code == 401
    assert staff.get("/api/v1/models/", params={"page": 99}).status_code == 404
    new = {"name": "contract", "task": "classification", "tags": ["demo"]}
    assert staff.post("/api/v1/models/", json=new).status_code == 201
    assert staff.post("/api/v1/models/", json=new).status_code == 409
    assert staff.post("/api/v1/models/", json={"name": "not a slug!"}).status_code == 400
    assert client.post("/api/v1/models/", json={"name": "mine"}).status_code == 403
    plain = {"Content-Type": "text/plain"}
    assert staff.post("/api/v1/models/", content=b"name=x", headers=plain).status_code == 415
    assert staff.get("/api/v1/models/contract/").status_code == 200
    assert staff.get("/api/v1/models/nope/").status_code == 404
    assert staff.patch("/api/v1/models/contract/", json={"description": "d"}).status_code == 200
    assert staff.patch("/api/v1/models/contract/", json={"stage": "x"}).status_code == 400
    assert staff.post("/api/v1/models/", json={"name": "gone"}).status_code == 201
    assert staff.delete("/api/v1/models/gone/").status_code == 204

    # Versions: upload (with and without the right SHA-256), list, get, artifact.
    upload = "/api/v1/models/contract/versions/"
    sha = hashlib.sha256(named).hexdigest()
    files = {"artifact": ("m.skops", named, "application/octet-stream")}
    assert staff.post(upload, files=files, data={"expected_sha256": "0" * 64}).status_code == 400
    assert staff.post(upload, files=files, data={"expected_sha256": sha}).status_code == 201
    other = sio.dumps(iris_margin_classifier())
    assert staff.post(upload, files={"artifact": ("m.skops", other)}).status_code == 201
    assert staff.get(upload).status_code == 200
    assert staff.get(f"{upload}1/").status_code == 200
    assert staff.get(f"{upload}7/").status_code == 404
    artifact = f"{upload}1/artifact"
    assert staff.get(artifact).content == named
    assert staff.get(artifact, headers={"Range": "bytes=0-99"}).status_code == 206
    assert staff.get(artifact, headers={"If-None-Match": f'"{sha}"'}).status_code == 304
    assert staff.get(artifact, headers={"Range": f"bytes={len(named)}-"}).status_code == 416
    assert client.get(artifact).status_code == 403

    # Stages: promote, a refused move, a second promotion, rollback.
    transition = f"{upload}1/transition"
    assert staff.post(transition, json={"stage": "production"}).status_code == 200
    assert staff.post(transition, json={"stage": "production"}).status_code == 409
    assert staff.post(transition, json={"stage": "live"}).status_code == 400
    assert staff.delete("/api/v1/models/contract/").status_code == 409
    assert staff.post(f"{upload}2/transition", json={"stage": "production"}).status_code == 200
    archived = client.post(f"{upload}1/predict", json={"features": IRIS_ROW})
    assert archived.status_code == 403
    assert staff.post("/api/v1/models/contract/rollback", json={}).status_code == 200
    staff.post("/api/v1/models/", json={"name": "empty"})
    assert staff.post("/api/v1/models/empty/rollback", json={}).status_code == 409

    one = {"features": IRIS_ROW}
    # Predict: a classifier with string classes (single, batch), a regressor, a classifier
    # without predict_proba, a pinned version, the deprecated alias; then each error.
    assert client.post("/api/v1/models/iris/predict", json=one).status_code == 200
    batch = {"instances": [IRIS_ROW, {**IRIS_ROW, "petal_length": 5.0}]}
    served = client.post("/api/v1/models/iris/predict", json=batch)
    assert served.status_code == 200 and len(served.json()["predictions"]) == 2
    from sklearn.datasets import load_diabetes

    row = load_diabetes(as_frame=True).data.iloc[0].to_dict()
    assert client.post("/api/v1/models/diabetes/predict", json={"features": row}).status_code == 200
    margin = client.post("/api/v1/models/iris-margin/predict", json={"features": IRIS_ROW})
    assert margin.json()["probabilities"] is None
    margin_batch = client.post("/api/v1/models/iris-margin/predict", json=batch)
    assert margin_batch.json()["predictions"][0]["probabilities"] is None
    assert client.post("/api/v1/models/iris/versions/1/predict", json=batch).status_code == 200
    assert client.post("/api/v1/predict/iris", json=one).status_code == 200
    incomplete = {k: v for k, v in IRIS_ROW.items() if k != "petal_width"}
    predict = "/api/v1/models/iris/predict"
    assert client.post(predict, json={"features": incomplete}).status_code == 400
    assert client.post(predict, content=b"{}", headers=plain).status_code == 415
    assert anon.post(predict, json=one).status_code == 401
    assert client.post("/api/v1/models/nope/predict", json=one).status_code == 404
    assert client.post("/api/v1/models/empty/predict", json=one).status_code == 409
    assert client.post("/api/v1/predict/empty", json=one).status_code == 409
    settings.PREDICTION_MAX_BATCH_ROWS = 1
    assert client.post(predict, json=batch).status_code == 413
    assert client.post("/api/v1/models/broken/predict", json=one).status_code == 503

    # Feedback.
    request_id = served.json()["request_id"]
    feedback = f"/api/v1/predictions/{request_id}/feedback"
    assert client.post(feedback, json={"actual": "setosa", "row_index": 0}).status_code == 200
    assert client.post(feedback, json={"actual": [1]}).status_code == 400
    assert client.post("/api/v1/predictions/nope/feedback", json={"actual": 1}).status_code == 404

    # Traffic splits.
    traffic = "/api/v1/models/contract/traffic"
    assert staff.get(traffic).status_code == 200
    split = {"splits": [{"version": 1, "weight": 90}, {"version": 2, "weight": 10}]}
    staff.post(f"{upload}2/transition", json={"stage": "staging"})
    assert staff.put(traffic, json=split).status_code == 200
    assert staff.put(traffic, json={"splits": [{"version": 9, "weight": 1}]}).status_code == 400
    assert client.put(traffic, json=split).status_code == 403
    assert staff.delete(traffic).status_code == 204

    # Aliases: set, move, read, predict through, remove; each refusal.
    aliases = "/api/v1/models/iris/aliases"
    champion = f"{aliases}/champion"
    assert staff.put(champion, json={"version": 1, "comment": "first"}).status_code == 200
    assert staff.put(champion, json={"version": 9}).status_code == 400
    assert staff.put(f"{aliases}/latest", json={"version": 1}).status_code == 400
    assert client.put(champion, json={"version": 1}).status_code == 403
    assert staff.put("/api/v1/models/nope/aliases/x", json={"version": 1}).status_code == 404
    assert staff.get(aliases).status_code == 200
    assert staff.get("/api/v1/models/nope/aliases").status_code == 404
    assert client.get(champion).json()["aliases"] == ["champion"]
    assert client.get(f"{aliases}/latest").status_code == 200
    assert client.get(f"{aliases}/nobody").status_code == 404
    by_alias = client.post(f"{champion}/predict", json=one)
    assert by_alias.status_code == 200 and by_alias.json()["alias"] == "champion"
    assert client.post(f"{champion}/predict", json={"features": incomplete}).status_code == 400
    assert anon.post(f"{champion}/predict", json=one).status_code == 401
    assert client.post(f"{aliases}/nobody/predict", json=one).status_code == 404
    records = {"dataframe_records": [IRIS_ROW]}
    assert client.post(f"{champion}/invocations", json=records).status_code == 200
    assert client.post(f"{champion}/invocations", json={"unknown": []}).status_code == 400
    assert client.post(f"{aliases}/nobody/invocations", json=records).status_code == 404
    assert staff.delete(champion).status_code == 204
    assert staff.delete(champion).status_code == 404
    assert client.delete(champion).status_code == 403
    staff.post(f"{upload}2/transition", json={"stage": "archived"})
    assert staff.put("/api/v1/models/contract/aliases/x", json={"version": 2}).status_code == 409
    staff.post(f"{upload}2/transition", json={"stage": "staging"})

    # Version tags (PATCH merges) and the list filters.
    tags = {"tags": {"validated": "true", "old": None}}
    assert staff.patch(f"{upload}2/", json=tags).status_code == 200
    assert staff.patch(f"{upload}2/", json={"stage": "production"}).status_code == 400
    assert staff.patch(f"{upload}7/", json=tags).status_code == 404
    assert client.patch(f"{upload}2/", json=tags).status_code == 403
    listed = staff.get(upload, params={"tag": "validated:true", "stage": "staging"})
    assert [v["version"] for v in listed.json()["results"]] == [2]
    assert staff.get(upload, params={"alias": "latest", "run_id": "x"}).status_code == 200
    assert staff.get(upload, params={"stage": "live"}).status_code == 400
    found = staff.get("/api/v1/models/", params={"tag": "demo", "search": "contract"})
    assert [m["name"] for m in found.json()["results"]] == ["contract"]
    assert staff.get("/api/v1/models/", params={"tag": "bad key"}).status_code == 400

    assert (
        staff.put("/api/v1/models/contract/aliases/shadow", json={"version": 2}).status_code == 200
    )
    assert staff.delete(f"{upload}1/").status_code == 409  # the production version
    deleted = staff.delete(f"{upload}2/")
    assert deleted.status_code == 200
    assert deleted.json()["aliases_removed"] == [{"alias": "shadow", "version": 2}]

    # The audit trail (staff only).
    assert staff.get("/api/v1/audit-events/", params={"model": "contract"}).status_code == 200
    assert staff.get("/api/v1/audit-events/", params={"since": "x"}).status_code == 400
    assert client.get("/api/v1/audit-events/").status_code == 403

    # MLflow's scoring protocol.
    frame = {"dataframe_split": {"columns": list(IRIS_ROW), "data": [list(IRIS_ROW.values())]}}
    assert client.post("/api/v1/models/iris/invocations", json=frame).status_code == 200
    pinned = "/api/v1/models/iris/versions/1/invocations"
    assert client.post(pinned, json={"dataframe_records": [IRIS_ROW]}).status_code == 200
    assert client.post(pinned, json={"unknown": []}).status_code == 400

    # Datasets, training jobs, drift.
    dataset = {
        "name": "iris-data",
        "target_column": "species",
        "feature_columns": json.dumps(list(x.columns)),
    }
    created = staff.post(
        "/api/v1/datasets/", data=dataset, files={"file": ("iris.csv", csv, "text/csv")}
    )
    assert created.status_code == 201
    assert staff.post("/api/v1/datasets/", files={"name": (None, "x")}).status_code == 400
    assert staff.get("/api/v1/datasets/").status_code == 200
    jobs = "/api/v1/models/iris/training-jobs"
    job = staff.post(jobs, json={"dataset": "iris-data", "estimator": "LogisticRegression"})
    assert job.status_code == 202
    assert staff.get(jobs).status_code == 200
    assert staff.get(f"{jobs}/{job.json()['id']}").status_code == 200
    assert staff.get(f"{jobs}/999999").status_code == 404
    assert staff.get("/api/v1/models/iris/drift").status_code == 200
    assert staff.get("/api/v1/models/iris/drift", params={"version": "x"}).status_code == 400

    # Batch jobs: one run to the end here (the tasks called in this process), one cancelled.
    from predictions import batch

    batches = "/api/v1/models/iris/batch-jobs"
    rows = {"file": ("rows.csv", x.to_csv(index=False).encode(), "text/csv")}
    done = staff.post(batches, files=rows, data={"chunk_rows": "50"})
    assert done.status_code == 202
    done_id = done.json()["id"]
    for index in batch.batch_job_start(job_id=done_id):
        batch.batch_chunk_run(job_id=done_id, index=index)
    batch.batch_job_finish(job_id=done_id)
    assert staff.get(f"{batches}/{done_id}").json()["status"] == "succeeded"
    assert staff.get(f"{batches}/{done_id}/output").status_code == 200
    assert staff.get(f"{batches}/{done_id}/errors").status_code == 200
    assert staff.post(f"{batches}/{done_id}/resume").status_code == 409
    assert staff.post(batches, files=rows, data={"chunk_rows": "0"}).status_code == 400
    assert staff.post(batches, files=rows, data={"version": "99"}).status_code == 400
    assert client.post(batches, files=rows).status_code == 403
    assert staff.get(batches).status_code == 200
    assert staff.get(f"{batches}/999999").status_code == 404
    queued = staff.post(batches, files=rows).json()["id"]
    assert staff.get(f"{batches}/{queued}/output").status_code == 404
    assert staff.get(f"{batches}/{queued}/errors").status_code == 404
    assert staff.post(f"{batches}/{queued}/cancel").status_code == 200
    assert staff.post(f"{batches}/{queued}/cancel").status_code == 409
    assert staff.post(f"{batches}/999999/resume").status_code == 404

    # Webhooks (staff with the webhook permissions); the secret only in the creation's answer.
    hook_body = {"name": "ci", "url": "http://93.184.215.14/hook", "events": ["backup.failed"]}
    made = staff.post("/api/v1/webhooks/", json=hook_body)
    assert made.status_code == 201 and made.json()["secret"].startswith("whsec_")
    hook = f"/api/v1/webhooks/{made.json()['id']}/"
    private = {**hook_body, "url": "http://127.0.0.1/hook"}
    assert staff.post("/api/v1/webhooks/", json=private).status_code == 400
    assert client.post("/api/v1/webhooks/", json=hook_body).status_code == 403
    assert client.get("/api/v1/webhooks/").status_code == 403
    assert staff.get("/api/v1/webhooks/").status_code == 200
    assert "secret" not in staff.get(hook).json()
    assert staff.get("/api/v1/webhooks/999999/").status_code == 404
    assert staff.patch(hook, json={"active": False}).status_code == 200
    assert staff.patch(hook, json={"events": ["nope"]}).status_code == 400
    ping = staff.post(f"{hook}ping")
    assert ping.status_code == 202
    assert staff.get(f"{hook}deliveries/").status_code == 200
    assert staff.get("/api/v1/webhooks/999999/deliveries/").status_code == 404
    redeliver = f"{hook}deliveries/{ping.json()['delivery_id']}/redeliver"
    assert staff.post(redeliver).status_code == 202
    assert staff.post(f"{hook}deliveries/{'0' * 32}/redeliver").status_code == 404
    assert staff.post("/api/v1/webhooks/999999/ping").status_code == 404
    assert staff.delete(hook).status_code == 204
    assert staff.delete(hook).status_code == 404

    # Rate limits last: a 429 with Retry-After.
    settings.REST_FRAMEWORK = {
        **django_settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"predict": "1/min", "read": "1/min"},
    }
    throttle_window_room(60)
    client.post(predict, json={"features": IRIS_ROW})
    assert client.post(predict, json=one).status_code == 429
    client.get("/api/v1/models/")
    assert client.get("/api/v1/models/").status_code == 429

    seen: set[tuple[str, str]] = set()
    statuses: dict[str, set[int]] = {}
    for response in recorder.responses:
        method = response.request.method
        operation = schema.find_operation_by_path(method, response.request.url.path)
        assert operation is not None, (method, response.request.url.path)
        documented = raw["paths"][operation.path][method.lower()]
        where = (method, operation.path, response.status_code)
        assert str(response.status_code) in documented["responses"], where
        operation.validate_response(response)
        assert response.headers.get("X-Request-ID"), where
        if response.status_code in {429, 503}:
            assert int(response.headers["Retry-After"]) > 0, where
        seen.add((method.lower(), operation.path))
        statuses.setdefault(documented["operationId"], set()).add(response.status_code)

    every = {(m, p) for p, item in raw["paths"].items() for m in item if m in METHODS}
    assert every - seen == set()
    assert statuses["predict"] >= {200, 400, 401, 404, 409, 413, 415, 429, 503}
    assert statuses["predict_version"] >= {200, 403}
    assert statuses["create_model"] >= {201, 400, 403, 409, 415}
    assert statuses["download_artifact"] == {200, 206, 304, 403, 416}
    assert statuses["create_webhook"] >= {201, 400, 403}
