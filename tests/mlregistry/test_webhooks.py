"""Webhooks in one process: configuration (API and admin), events written with the change,
deliveries sent to a real HTTP receiver on loopback, retries, ordering, safety. The same path
through a real Celery worker: test_webhooks_worker.py."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import transaction
from django.utils import timezone

from config.events import EVENT_TYPES, event_publish
from config.health import READINESS_CHECKS
from mlregistry import services
from mlregistry.models import AuditEvent, Stage
from mlregistry.webhooks import services as webhooks
from mlregistry.webhooks.models import DeliveryStatus, Webhook, WebhookDelivery
from mlregistry.webhooks.signing import signature_header, signature_valid
from mlregistry.webhooks.targets import TargetRefused, target_check
from tests import factories
from tests.mlregistry.webhook_receiver import Receiver

pytestmark = pytest.mark.django_db

README = Path(__file__).resolve().parents[2] / "README.md"
WEBHOOK_PERMS = ["view_webhook", "add_webhook", "change_webhook", "delete_webhook"]


@pytest.fixture(autouse=True)
def _loopback_allowed(settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0.01
    settings.WEBHOOK_RETRY_MAX_SECONDS = 0.05


@pytest.fixture
def receiver():
    running = Receiver().start()
    yield running
    running.stop()


@pytest.fixture
def webhook_staff(db):
    return factories.staff_create("hooks", extra_perms=WEBHOOK_PERMS)


@pytest.fixture
def hooks_api(webhook_staff):
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {factories.token_create(webhook_staff)}")
    return client


def _hook(receiver, *, events=EVENT_TYPES, model=None, path="/hook", name="ci") -> Webhook:
    return webhooks.webhook_create(
        name=name, url=receiver.url + path, events=list(events), model=model, actor="tests"
    )


def _send_all(max_rounds: int = 50) -> None:
    """Plays the worker in this process: attempts every pending delivery, in id order, until
    none is due (sleeping through the short test backoff)."""
    for _ in range(max_rounds):
        pending = list(
            WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING)
            .order_by("id")
            .values_list("id", flat=True)
        )
        if not pending:
            return
        for delivery_id in pending:
            webhooks.webhook_delivery_attempt(delivery_id=delivery_id)
        time.sleep(0.06)
    raise AssertionError("deliveries still pending")


def _readme_verifier():
    text = README.read_text()
    section = text[text.index("### Verifying a delivery") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 10
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own lines
    return namespace["registry_signature_ok"]


# --- Configuration ---------------------------------------------------------------------------


def test_api_create_shows_the_secret_once_and_never_again(hooks_api, receiver, caplog):
    caplog.set_level(logging.DEBUG)
    answer = hooks_api.post(
        "/api/v1/webhooks/",
        {"name": "ci", "url": receiver.url + "/hook", "events": ["model_version.created"]},
        format="json",
    )
    assert answer.status_code == 201, answer.content
    secret = answer.json()["secret"]
    assert secret.startswith("whsec_") and len(secret) > 40
    hook_id = answer.json()["id"]

    for path in (
        "/api/v1/webhooks/",
        f"/api/v1/webhooks/{hook_id}/",
        f"/api/v1/webhooks/{hook_id}/deliveries/",
        "/api/v1/audit-events/",
    ):
        body = hooks_api.get(path).content.decode()
        assert secret not in body, path
    patched = hooks_api.patch(f"/api/v1/webhooks/{hook_id}/", {"name": "ci-2"}, format="json")
    assert patched.status_code == 200 and secret not in patched.content.decode()
    assert "secret" not in patched.json()
    refused = hooks_api.patch(f"/api/v1/webhooks/{hook_id}/", {"secret": "x"}, format="json")
    assert refused.status_code == 400 and "secret" in refused.json()["error"]["fields"]
    assert Webhook.objects.get(pk=hook_id).secret == secret
    audit = AuditEvent.objects.filter(object_type="mlregistry.webhook").order_by("id")
    assert [a.verb for a in audit] == ["create", "update"]
    assert all(secret not in json.dumps(a.changes) for a in audit)
    assert all(
        secret not in record.getMessage() + str(record.__dict__) for record in caplog.records
    )


def test_api_update_and_delete_are_audited(hooks_api, receiver):
    hook = _hook(receiver)
    model = factories.registered_model_create("iris")
    answer = hooks_api.patch(
        f"/api/v1/webhooks/{hook.pk}/",
        {"events": ["drift.detected"], "model": "iris", "active": False},
        format="json",
    )
    assert answer.status_code == 200, answer.content
    assert answer.json()["events"] == ["drift.detected"]
    assert answer.json()["model"] == model.name
    assert answer.json()["active"] is False
    assert hooks_api.delete(f"/api/v1/webhooks/{hook.pk}/").status_code == 204
    assert hooks_api.get(f"/api/v1/webhooks/{hook.pk}/").status_code == 404
    verbs = list(
        AuditEvent.objects.filter(object_type="mlregistry.webhook")
        .order_by("id")
        .values_list("verb", flat=True)
    )
    assert verbs == ["create", "update", "delete"]


def test_api_refuses_bad_input_naming_the_field_and_changes_nothing(hooks_api, receiver, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = []
    cases = [
        ({"name": "x", "url": receiver.url, "events": ["model_version.created"]}, "url"),
        ({"name": "x", "url": "http://example.com/", "events": ["nope"]}, "events"),
        ({"name": "x", "url": "http://example.com/", "events": []}, "events"),
        ({"name": "x", "url": "ftp://example.com/", "events": ["backup.failed"]}, "url"),
        ({"url": "http://example.com/", "events": ["backup.failed"]}, "name"),
    ]
    for body, field in cases:
        answer = hooks_api.post("/api/v1/webhooks/", body, format="json")
        assert answer.status_code == 400, (body, answer.content)
        fields = answer.json()["error"]["fields"]
        assert any(name.split(".")[0] == field for name in fields), (body, answer.json())
    unknown_model = hooks_api.post(
        "/api/v1/webhooks/",
        {"name": "x", "url": "http://93.184.215.14/", "events": ["drift.detected"], "model": "n"},
        format="json",
    )
    # The webhooks route exists: an unknown model is a bad field, not a missing resource.
    assert unknown_model.status_code == 400
    assert unknown_model.json()["error"]["fields"]["model"] == ["No registered model named 'n'."]
    assert not Webhook.objects.exists()
    assert not AuditEvent.objects.filter(object_type="mlregistry.webhook").exists()


def test_a_patch_changes_only_what_it_sends_and_the_schema_shows_no_defaults_for_it(
    hooks_api, receiver
):
    """A generated client sends every field that has a default in the schema: a default
    `active: true` in the PATCH body re-enabled a disabled webhook on a rename."""
    from drf_spectacular.generators import SchemaGenerator

    hook = _hook(receiver)
    hooks_api.patch(f"/api/v1/webhooks/{hook.pk}/", {"active": False}, format="json")
    renamed = hooks_api.patch(f"/api/v1/webhooks/{hook.pk}/", {"name": "new"}, format="json")
    assert (renamed.json()["name"], renamed.json()["active"]) == ("new", False)
    unknown = hooks_api.patch(f"/api/v1/webhooks/{hook.pk}/", {"model": "nope"}, format="json")
    assert unknown.status_code == 400 and "model" in unknown.json()["error"]["fields"]
    # A misspelt field is named, not ignored with a 200.
    misspelt = hooks_api.patch(f"/api/v1/webhooks/{hook.pk}/", {"nmae": "x"}, format="json")
    assert misspelt.status_code == 400 and "nmae" in misspelt.json()["error"]["fields"]
    # A method the view does not have is a 405 naming the ones it has, not a 403.
    put = hooks_api.put(f"/api/v1/webhooks/{hook.pk}/", {"name": "x"}, format="json")
    assert put.status_code == 405 and "PATCH" in put["Allow"]

    schema = SchemaGenerator().get_schema(request=None, public=True)
    for name, component in schema["components"]["schemas"].items():
        if name.startswith("Patched"):
            defaults = {
                field: spec["default"]
                for field, spec in component.get("properties", {}).items()
                if "default" in spec
            }
            assert defaults == {}, (name, defaults)


def test_only_staff_with_the_webhook_permissions_may_use_the_api(client_api, staff_api):
    assert client_api.get("/api/v1/webhooks/").status_code == 403
    # Registry staff without the webhook permissions.
    assert staff_api.get("/api/v1/webhooks/").status_code == 403
    body = {"name": "x", "url": "http://93.184.215.14/", "events": ["backup.failed"]}
    assert staff_api.post("/api/v1/webhooks/", body, format="json").status_code == 403


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/",
        "http://localhost/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:10.0.0.1]/",
        "http://10.1.2.3/",
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://[fd00::1]/",
        # IPv6 forms that carry an IPv4 address a translator may reach: NAT64 (well-known and
        # local-use prefixes), 6to4, Teredo, SIIT, IPv4-compatible; and site-local.
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[64:ff9b:1::7f00:1]/",
        "http://[2002:a9fe:a9fe::]/",
        "http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/",
        "http://[::ffff:0:7f00:1]/",
        "http://[::7f00:1]/",
        "http://[fec0::1]/",
        "http://0.0.0.0/",
        "http://100.64.0.1/",
        "http://user:pw@93.184.215.14/",
        "file:///etc/passwd",
        "gopher://93.184.215.14/",
        "http:///nohost",
        "http://no-such-host.invalid/",
    ],
)
def test_urls_reaching_this_machine_or_a_private_network_are_refused(url, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = []
    with pytest.raises(TargetRefused) as refusal:
        target_check(url)
    assert refusal.value.fields["url"]


def test_a_dns_name_resolving_to_a_private_address_is_refused(settings, monkeypatch):
    # Fault injected on purpose: a public-looking name whose DNS answer is private.
    settings.WEBHOOK_ALLOWED_HOSTS = []
    real = socket.getaddrinfo

    def rebinding(host, *args, **kwargs):
        if host == "hooks.example.com":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", 80))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with pytest.raises(TargetRefused, match=r"10\.0\.0\.7"):
        target_check("http://hooks.example.com/")


def test_allowed_hosts_are_exact(settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    assert str(target_check("http://127.0.0.1:9/x?y=1").address) == "127.0.0.1"
    with pytest.raises(TargetRefused):
        target_check("http://127.0.0.2/")
    assert target_check("http://93.184.215.14/").host == "93.184.215.14"


# --- Events become deliveries, on commit ------------------------------------------------------


def test_a_version_upload_is_delivered_signed_with_the_api_fields(
    receiver, django_capture_on_commit_callbacks, staff_api
):
    hook = _hook(receiver)
    model = factories.registered_model_create("iris")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        version = factories.version_create(model)
    delivery = WebhookDelivery.objects.get(event="model_version.created")
    # Written with the change; the sending waits for the commit.
    assert receiver.received() == []
    assert any(getattr(cb, "func", None) is webhooks.deliveries_enqueue for cb in callbacks)

    _send_all()
    (request,) = receiver.received()
    assert request.headers["x-registry-event"] == "model_version.created"
    assert request.headers["x-registry-delivery"] == str(delivery.delivery_id)
    assert signature_valid(
        secret=hook.secret, body=request.body, header=request.headers["x-registry-signature"]
    )
    payload = request.json
    assert set(payload) == {"id", "event", "created_at", "data"}
    api_body = staff_api.get(f"/api/v1/models/iris/versions/{version.version}/").json()
    assert {k: api_body[k] for k in payload["data"]} == payload["data"]
    assert payload["data"]["version"] == version.version


def test_the_readme_lines_verify_a_real_delivery(receiver):
    hook = _hook(receiver)
    model = factories.registered_model_create("iris")
    factories.version_create(model)
    _send_all()
    (request,) = receiver.received()
    verify = _readme_verifier()
    header = request.headers["x-registry-signature"]

    assert verify(hook.secret, request.body, header) is True
    assert verify(hook.secret, request.body + b" ", header) is False
    assert verify("whsec_other", request.body, header) is False
    old = signature_header(secret=hook.secret, body=request.body, timestamp=int(time.time()) - 600)
    assert verify(hook.secret, request.body, old) is False  # a replay
    assert verify(hook.secret, request.body, "garbage") is False


def test_a_change_that_rolls_back_announces_nothing(receiver):
    _hook(receiver)
    model = factories.registered_model_create("iris")
    with pytest.raises(RuntimeError), transaction.atomic():
        factories.version_create(model)
        raise RuntimeError("rolled back")
    assert not WebhookDelivery.objects.exists()


def test_stage_changes_and_traffic_splits_are_events(receiver):
    _hook(receiver, events=["model_version.stage_changed", "traffic_split.changed"])
    model = factories.registered_model_create("iris")
    v1 = factories.version_create(model)
    v2 = factories.version_create(model, c=0.5)
    services.model_version_transition(version=v1, stage=Stage.PRODUCTION, actor="tests")
    services.model_version_transition(version=v2, stage=Stage.STAGING, actor="tests")
    from predictions.services import traffic_split_clear, traffic_split_set

    traffic_split_set(
        model=model, splits=[{"version": 1, "weight": 90}, {"version": 2, "weight": 10}], actor="t"
    )
    traffic_split_clear(model=model, actor="t")
    services.model_version_rollback  # noqa: B018 - rollback is a transition: covered above
    _send_all()
    events = [(r.json["event"], r.json["data"]) for r in receiver.received()]
    assert [e for e, _ in events] == [
        "model_version.stage_changed",
        "model_version.stage_changed",
        "traffic_split.changed",
        "traffic_split.changed",
    ]
    assert events[0][1]["transition"]["from_stage"] == "none"
    assert events[0][1]["transition"]["to_stage"] == "production"
    assert events[2][1] == {
        "model": "iris",
        "splits": [
            {"version": 1, "stage": "production", "weight": 90},
            {"version": 2, "stage": "staging", "weight": 10},
        ],
    }
    assert events[3][1] == {"model": "iris", "splits": []}


def test_model_filter_event_filter_and_inactive_webhooks(receiver):
    iris = factories.registered_model_create("iris")
    other = factories.registered_model_create("other")
    only_iris = _hook(receiver, model=iris, name="iris-only")
    _hook(receiver, events=["backup.failed"], name="backups-only")
    off = _hook(receiver, name="off")
    webhooks.webhook_update(webhook=off, actor="tests", active=False)
    factories.version_create(iris)
    factories.version_create(other)
    event_publish("backup.failed", data={"id": 1})
    rows = list(WebhookDelivery.objects.values_list("webhook__name", "event", "model_name"))
    assert sorted(rows) == [
        ("backups-only", "backup.failed", ""),
        ("iris-only", "model_version.created", "iris"),
    ]
    assert only_iris.deliveries.count() == 1


def test_an_unknown_event_type_is_a_programming_error():
    with pytest.raises(ValueError, match="Unknown event type"):
        event_publish("model.exploded", data={})


# --- Sending: retries, ordering, failures -----------------------------------------------------


def _failing_first(times: int, status: int = 503):
    def plan(previous, path, headers, body):
        if len(previous) < times:
            return status, {}, b"down for maintenance"
        return 200, {}, b"thanks"

    return plan


def test_a_receiver_failing_twice_gets_one_accepted_delivery_with_one_id(receiver):
    receiver.plan = _failing_first(2)
    _hook(receiver)
    model = factories.registered_model_create("iris")
    factories.version_create(model)
    _send_all()
    received = receiver.received()
    assert [r.status for r in received] == [503, 503, 200]
    assert len({r.headers["x-registry-delivery"] for r in received}) == 1
    assert len({r.body for r in received}) == 1
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == DeliveryStatus.SUCCEEDED
    attempts = list(delivery.attempts.order_by("number"))
    assert [(a.number, a.status_code) for a in attempts] == [(1, 503), (2, 503), (3, 200)]
    assert attempts[0].response_excerpt == "down for maintenance"
    assert all(a.duration_ms > 0 for a in attempts)
    assert delivery.webhook.failing_since is None


def test_429_is_retried_and_other_4xx_are_not(receiver):
    receiver.plan = _failing_first(1, status=429)
    _hook(receiver)
    event_publish("backup.failed", data={"id": 1})
    _send_all()
    assert [r.status for r in receiver.received()] == [429, 200]

    receiver.requests.clear()
    receiver.plan = lambda previous, *a: (410, {}, b"gone")
    event_publish("backup.failed", data={"id": 2})
    _send_all()
    assert [r.status for r in receiver.received()] == [410]
    failed = WebhookDelivery.objects.get(status=DeliveryStatus.FAILED)
    assert failed.attempt_count == 1


def test_retries_are_bounded(receiver, settings):
    settings.WEBHOOK_MAX_ATTEMPTS = 3
    receiver.plan = lambda previous, *a: (500, {}, b"x" * 5000)
    _hook(receiver)
    event_publish("backup.failed", data={"id": 1})
    _send_all()
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.attempt_count == 3 == len(receiver.received())
    assert all(len(a.response_excerpt) == 1024 for a in delivery.attempts.all())


def test_backoff_doubles_with_jitter_and_is_capped(settings):
    settings.WEBHOOK_RETRY_BASE_SECONDS = 10
    settings.WEBHOOK_RETRY_MAX_SECONDS = 60
    for attempt, full in [(1, 10), (2, 20), (3, 40), (4, 60), (9, 60)]:
        delays = {webhooks.retry_delay(attempt) for _ in range(50)}
        assert all(full / 2 <= d <= full for d in delays)
        assert len(delays) > 1


def test_a_network_error_is_retried_and_recorded(receiver, settings):
    settings.WEBHOOK_MAX_ATTEMPTS = 2
    hook = _hook(receiver)
    receiver.stop()  # nothing listens on that port any more
    event_publish("backup.failed", data={"id": 1})
    _send_all()
    delivery = WebhookDelivery.objects.get()
    errors = [a.error for a in delivery.attempts.all()]
    assert len(errors) == 2 and all(e.startswith("network: ConnectError") for e in errors)
    hook.refresh_from_db()
    assert hook.failing_since is not None and hook.active


@pytest.mark.parametrize("tls", [False, True])
def test_a_receiver_that_answers_drop_by_drop_is_cut_off_at_the_timeout(settings, monkeypatch, tls):
    """httpx's timeout bounds each read: a receiver sending a header line every 0.3 s held
    the worker for as long as it kept going. The whole answer must now come within
    WEBHOOK_TIMEOUT_SECONDS, or the attempt fails saying so; over TLS too, where the socket
    to cut is the one TLS wraps."""
    import ssl
    import threading

    settings.WEBHOOK_TIMEOUT_SECONDS = 1.0
    settings.WEBHOOK_MAX_ATTEMPTS = 1
    server_context = None
    host = "127.0.0.1"
    if tls:
        import trustme

        authority = trustme.CA()
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        authority.issue_cert("127.0.0.1").configure_cert(server_context)
        client_context = ssl.create_default_context()
        authority.configure_trust(client_context)
        # Trust injected on purpose: the sender's CA bundle does not know the test CA.
        monkeypatch.setattr(webhooks, "_tls_context", lambda: client_context)
    listener = socket.create_server((host, 0))
    stop = threading.Event()

    def drip() -> None:
        connection, _ = listener.accept()
        if server_context is not None:
            connection = server_context.wrap_socket(connection, server_side=True)
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\n")
            while not stop.is_set():
                try:
                    connection.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    return
                time.sleep(0.3)
            with contextlib.suppress(OSError):
                connection.sendall(b"Content-Length: 0\r\n\r\n")

    threading.Thread(target=drip, daemon=True).start()
    port = listener.getsockname()[1]
    scheme = "https" if tls else "http"
    Webhook.objects.create(
        name="slow", url=f"{scheme}://{host}:{port}/hook", events=["backup.failed"], secret="s"
    )
    event_publish("backup.failed", data={"id": 1})
    started = time.monotonic()
    try:
        _send_all()
    finally:
        stop.set()
        listener.close()
    assert time.monotonic() - started < 4
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == DeliveryStatus.FAILED
    [attempt] = delivery.attempts.all()
    assert attempt.error == "timeout: no whole answer within 1.0 s"


def test_events_of_one_model_are_sent_in_order_even_across_retries(receiver):
    seen_first = []

    def plan(previous, path, headers, body):
        # The first event of iris fails twice: nothing later for iris may overtake it.
        event = json.loads(body)
        if (event["data"]["name"], event["data"]["version"]) == ("iris", 1) and len(seen_first) < 2:
            seen_first.append(1)
            return 503, {}, b""
        return 200, {}, b""

    receiver.plan = plan
    _hook(receiver, events=["model_version.created"])
    model = factories.registered_model_create("iris")
    other = factories.registered_model_create("other")
    for c in (1.0, 0.5, 0.25):
        factories.version_create(model, c=c)
    factories.version_create(other)
    first = WebhookDelivery.objects.filter(model_name="iris").order_by("id").first()
    second = WebhookDelivery.objects.filter(model_name="iris").order_by("id")[1]

    assert webhooks.webhook_delivery_attempt(delivery_id=second.pk).outcome == "waiting"
    _send_all()
    accepted = [(r.json["data"]["name"], r.json["data"]["version"]) for r in receiver.received()]
    iris_order = [v for name, v in accepted if name == "iris"]
    assert iris_order == [1, 1, 1, 2, 3]
    assert ("other", 1) in accepted
    # The sender of the first is told which delivery comes next.
    first.refresh_from_db()
    assert first.status == DeliveryStatus.SUCCEEDED


def test_a_delivery_already_sent_is_not_sent_again(receiver):
    _hook(receiver)
    event_publish("backup.failed", data={"id": 1})
    delivery = WebhookDelivery.objects.get()
    assert webhooks.webhook_delivery_attempt(delivery_id=delivery.pk).outcome == "succeeded"
    assert webhooks.webhook_delivery_attempt(delivery_id=delivery.pk).outcome == "succeeded"
    assert webhooks.webhook_delivery_attempt(delivery_id=10**9).outcome == "gone"
    assert len(receiver.received()) == 1


def test_redirects_are_not_followed(receiver):
    receiver.plan = lambda previous, path, *a: (
        (302, {"Location": "/elsewhere"}, b"") if path == "/hook" else (200, {}, b"")
    )
    _hook(receiver)
    event_publish("backup.failed", data={"id": 1})
    _send_all()
    assert [(r.path, r.status) for r in receiver.received()] == [("/hook", 302)]
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.attempts.get().status_code == 302


def test_the_target_is_checked_again_at_send_time(receiver, settings):
    _hook(receiver)
    event_publish("backup.failed", data={"id": 1})
    settings.WEBHOOK_ALLOWED_HOSTS = []  # as if DNS now pointed the name at this machine
    _send_all()
    assert receiver.received() == []
    attempt = WebhookDelivery.objects.get(status=DeliveryStatus.FAILED).attempts.get()
    assert attempt.error.startswith("refused:") and attempt.status_code is None


def test_a_webhook_failing_for_a_day_is_disabled_audited_and_reported(
    receiver, settings, admin_client
):
    settings.WEBHOOK_MAX_ATTEMPTS = 1
    receiver.plan = lambda previous, *a: (500, {}, b"")
    hook = _hook(receiver)
    event_publish("backup.failed", data={"id": 1})
    _send_all()
    hook.refresh_from_db()
    assert hook.active and hook.failing_since is not None
    assert READINESS_CHECKS["webhooks"]()[0] == "ok"

    Webhook.objects.filter(pk=hook.pk).update(failing_since=timezone.now() - timedelta(hours=25))
    event_publish("backup.failed", data={"id": 2})
    event_publish("backup.failed", data={"id": 3})
    _send_all()
    hook.refresh_from_db()
    assert not hook.active
    assert "24" in hook.disabled_reason
    audit = AuditEvent.objects.get(object_type="mlregistry.webhook", verb="disable")
    assert audit.actor_name == "job:webhooks"
    # The delivery queued behind it is not sent to a disabled webhook.
    assert len(receiver.received()) == 2
    state, detail = READINESS_CHECKS["webhooks"]()
    assert state == "degraded"
    assert detail["disabled_after_failing"][0]["name"] == "ci"
    ready = admin_client.get("/health/ready").json()
    assert ready["checks"]["webhooks"]["status"] == "degraded"
    dashboard = admin_client.get("/admin/").content.decode()
    assert "mlr-webhooks-disabled" in dashboard and "was disabled" in dashboard

    webhooks.webhook_update(webhook=hook, actor="tests", active=True)
    hook.refresh_from_db()
    assert hook.active and hook.failing_since is None and hook.disabled_reason == ""
    assert READINESS_CHECKS["webhooks"]()[0] == "ok"


def test_ping_and_redeliver_through_the_api(hooks_api, receiver):
    hook = _hook(receiver, events=["backup.failed"])
    event_publish("backup.failed", data={"id": 1})
    _send_all()
    original = WebhookDelivery.objects.get()

    ping = hooks_api.post(f"/api/v1/webhooks/{hook.pk}/ping")
    assert ping.status_code == 202, ping.content
    # The delivery id as some clients print a UUID: upper case (RFC 9562 reads either).
    again = hooks_api.post(
        f"/api/v1/webhooks/{hook.pk}/deliveries/{str(original.delivery_id).upper()}/redeliver"
    )
    assert again.status_code == 202, again.content
    assert again.json()["redelivery_of"] == str(original.delivery_id)
    missing = hooks_api.post(f"/api/v1/webhooks/{hook.pk}/deliveries/{uuid.uuid4()}/redeliver")
    assert missing.status_code == 404
    _send_all()
    received = receiver.received()
    assert [r.headers["x-registry-event"] for r in received] == [
        "backup.failed",
        "ping",
        "backup.failed",
    ]
    assert received[2].body == received[0].body  # the same event, id and all
    assert received[2].headers["x-registry-delivery"] != received[0].headers["x-registry-delivery"]
    listed = hooks_api.get(f"/api/v1/webhooks/{hook.pk}/deliveries/").json()["results"]
    assert [d["event"] for d in listed] == ["backup.failed", "ping", "backup.failed"]
    assert listed[0]["attempts"][0]["status_code"] == 200
    verbs = set(
        AuditEvent.objects.filter(object_type="mlregistry.webhook").values_list("verb", flat=True)
    )
    assert {"ping", "redeliver"} <= verbs


def test_lost_tasks_are_found_by_the_resume_job(receiver):
    _hook(receiver)
    event_publish("backup.failed", data={"id": 1})
    event_publish("backup.failed", data={"id": 2})
    first, _ = WebhookDelivery.objects.order_by("id")
    assert webhooks.webhook_deliveries_due() == []
    WebhookDelivery.objects.update(next_attempt_at=timezone.now() - timedelta(minutes=5))
    # Only the head of the queue: the second follows it.
    assert webhooks.webhook_deliveries_due() == [first.pk]


# --- Admin -------------------------------------------------------------------------------------


def test_admin_add_shows_the_secret_once_and_audits(admin_client, receiver):
    page = admin_client.post(
        "/admin/mlregistry/webhook/add/",
        {
            "name": "chat",
            "url": receiver.url + "/hook",
            "events": ["model_version.stage_changed", "drift.detected"],
            "active": "on",
        },
    )
    assert page.status_code == 200
    errors = re.findall(r'<ul class="errorlist[^>]*>(.*?)</ul>', page.content.decode(), re.S)
    assert not errors, errors
    hook = Webhook.objects.get()
    assert hook.secret in page.content.decode()
    assert hook.events == ["model_version.stage_changed", "drift.detected"]
    change = admin_client.get(f"/admin/mlregistry/webhook/{hook.pk}/change/")
    assert change.status_code == 200 and hook.secret not in change.content.decode()
    listing = admin_client.get("/admin/mlregistry/webhook/")
    assert hook.secret not in listing.content.decode()
    assert AuditEvent.objects.filter(object_type="mlregistry.webhook", verb="create").exists()


def test_admin_refuses_a_private_url(admin_client, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = []
    page = admin_client.post(
        "/admin/mlregistry/webhook/add/",
        {"name": "x", "url": "http://169.254.169.254/", "events": ["backup.failed"]},
    )
    assert page.status_code == 200
    assert "link-local" in page.content.decode()
    assert not Webhook.objects.exists()


def test_admin_lists_deliveries_pings_and_redelivers(admin_client, receiver):
    hook = _hook(receiver)
    event_publish("backup.failed", data={"id": 1})
    _send_all()
    delivery = WebhookDelivery.objects.get()
    change = admin_client.get(f"/admin/mlregistry/webhook/{hook.pk}/change/").content.decode()
    assert str(delivery.delivery_id) in change
    detail = admin_client.get(f"/admin/mlregistry/webhookdelivery/{delivery.pk}/change/")
    assert detail.status_code == 200 and "thanks" not in detail.content.decode()
    assert ">200<" in detail.content.decode().replace(" ", "")

    admin_client.post(
        "/admin/mlregistry/webhook/",
        {"action": "send_ping", "_selected_action": [hook.pk]},
    )
    admin_client.post(
        "/admin/mlregistry/webhookdelivery/",
        {"action": "redeliver", "_selected_action": [delivery.pk]},
    )
    assert sorted(WebhookDelivery.objects.values_list("event", flat=True)) == [
        "backup.failed",
        "backup.failed",
        "ping",
    ]
    _send_all()
    assert len(receiver.received()) == 3


def test_admin_delete_goes_through_the_service(admin_client, receiver):
    hook = _hook(receiver)
    answer = admin_client.post(f"/admin/mlregistry/webhook/{hook.pk}/delete/", {"post": "yes"})
    assert answer.status_code == 302
    assert not Webhook.objects.exists()
    assert AuditEvent.objects.filter(object_type="mlregistry.webhook", verb="delete").exists()


def test_admin_change_goes_through_the_service(admin_client, receiver):
    hook = _hook(receiver)
    answer = admin_client.post(
        f"/admin/mlregistry/webhook/{hook.pk}/change/",
        {
            "name": "renamed",
            "url": receiver.url + "/other",
            "events": ["backup.failed"],
            "deliveries-TOTAL_FORMS": "0",
            "deliveries-INITIAL_FORMS": "0",
        },
    )
    assert answer.status_code == 302, answer.content[:3000]
    hook.refresh_from_db()
    assert (hook.name, hook.events, hook.active) == ("renamed", ["backup.failed"], False)
    update = AuditEvent.objects.get(object_type="mlregistry.webhook", verb="update")
    assert set(update.changes) == {"name", "url", "events", "active"}


def test_the_tasks_send_and_resume(receiver):
    from mlregistry.webhooks.tasks import webhook_deliveries_resume_task, webhook_delivery_send_task

    _hook(receiver)
    event_publish("backup.failed", data={"id": 1})
    event_publish("backup.failed", data={"id": 2})
    first, second = WebhookDelivery.objects.order_by("id")
    # The second waits for the first; the first's sender then sends it (on the broker).
    assert webhook_delivery_send_task.apply((second.pk,)).get() == "waiting"
    assert webhook_delivery_send_task.apply((first.pk,)).get() == "succeeded"
    WebhookDelivery.objects.filter(pk=second.pk).update(
        next_attempt_at=timezone.now() - timedelta(minutes=5)
    )
    assert webhook_deliveries_resume_task.apply().get() == [second.pk]


def test_signature_valid_refuses_malformed_headers():
    body = b"{}"
    good = signature_header(secret="s", body=body)
    assert signature_valid(secret="s", body=body, header=good)
    t = good.split(",")[0]
    for header in (
        "",
        "t=abc,v1=00",
        "v1=00",
        "t=1",
        good.replace("v1=", "v0="),
        "t=" + "9" * 400 + ",v1=00",  # past float range
        "t=\u0661\u0662,v1=00",  # digits of another script
        f"{t},v1=\u00e9\u00e9",  # a digest that is not ASCII
    ):
        assert not signature_valid(secret="s", body=body, header=header), header


def test_admin_list_says_why_a_webhook_is_off(admin_client, receiver):
    on = _hook(receiver, name="on")
    off = _hook(receiver, name="off")
    failed = _hook(receiver, name="failed")
    webhooks.webhook_update(webhook=off, actor="tests", active=False)
    webhooks.webhook_disable(webhook=failed, actor="job:webhooks", reason="kept failing")
    assert webhooks.webhook_disable(webhook=failed, actor="tests", reason="again").disabled_reason
    page = admin_client.get("/admin/mlregistry/webhook/").content.decode()
    assert "disabled: kept failing" in page
    assert on.name in page


def test_old_finished_deliveries_are_pruned_and_pending_ones_kept(receiver):
    _hook(receiver)
    for number in range(3):
        event_publish("backup.failed", data={"id": number})
    done, failed, pending = WebhookDelivery.objects.order_by("id")
    webhooks.webhook_delivery_attempt(delivery_id=done.pk)
    WebhookDelivery.objects.filter(pk=failed.pk).update(status=DeliveryStatus.FAILED)
    WebhookDelivery.objects.update(created_at=timezone.now() - timedelta(days=40))
    cutoff = timezone.now() - timedelta(days=30)
    assert webhooks.webhook_deliveries_prune(older_than=cutoff, dry_run=True) == 2
    assert WebhookDelivery.objects.count() == 3
    assert webhooks.webhook_deliveries_prune(older_than=cutoff, batch_size=1) == 2
    assert list(WebhookDelivery.objects.values_list("pk", flat=True)) == [pending.pk]


def test_deleting_a_model_deletes_its_webhooks_audited(receiver, staff_user):
    model = factories.registered_model_create("iris")
    hook = _hook(receiver, model=model)
    everything = _hook(receiver, name="every-model")
    services.registered_model_delete(model=model, actor=staff_user)
    assert list(Webhook.objects.all()) == [everything]
    deleted = AuditEvent.objects.get(object_type="mlregistry.webhook", verb="delete")
    assert deleted.object_id == str(hook.pk)
    assert deleted.actor_name == staff_user.username


def _https_receiver(monkeypatch, settings, certified_name: str):
    """An https receiver on 127.0.0.1 with a certificate for `certified_name`; the name
    "hooks.test" resolves to it (allowed by address), and the sender trusts the test CA."""
    import ssl

    import trustme

    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(certified_name).configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    # Trust injected on purpose: the sender's CA bundle does not know the test CA.
    monkeypatch.setattr(webhooks, "_tls_context", lambda: client_context)
    real = socket.getaddrinfo

    def resolve(host, *args, **kwargs):
        if host == "hooks.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", args[0]))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    return Receiver(tls=server_context).start()


def test_https_goes_to_the_checked_address_with_the_host_name_verified(monkeypatch, settings):
    receiver = _https_receiver(monkeypatch, settings, "hooks.test")
    try:
        port = receiver.server.server_address[1]
        hook = webhooks.webhook_create(
            name="tls", url=f"https://hooks.test:{port}/hook", events=["backup.failed"], actor="t"
        )
        event_publish("backup.failed", data={"id": 1})
        _send_all()
        (request,) = receiver.received()
        assert request.headers["host"] == f"hooks.test:{port}"
        assert signature_valid(
            secret=hook.secret, body=request.body, header=request.headers["x-registry-signature"]
        )
    finally:
        receiver.stop()


def test_https_with_a_certificate_for_another_name_is_not_sent(monkeypatch, settings):
    receiver = _https_receiver(monkeypatch, settings, "elsewhere.test")
    try:
        port = receiver.server.server_address[1]
        webhooks.webhook_create(
            name="tls", url=f"https://hooks.test:{port}/hook", events=["backup.failed"], actor="t"
        )
        settings.WEBHOOK_MAX_ATTEMPTS = 1
        event_publish("backup.failed", data={"id": 1})
        _send_all()
        assert receiver.received() == []
        attempt = WebhookDelivery.objects.get(status=DeliveryStatus.FAILED).attempts.get()
        assert attempt.error.startswith("network: ConnectError") and "certificate" in attempt.error
    finally:
        receiver.stop()
