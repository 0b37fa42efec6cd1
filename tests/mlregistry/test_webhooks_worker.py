"""Webhooks end to end: the registry's services publish in this process, a real Celery worker
process sends the deliveries over a real broker to a real HTTP receiver on loopback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from celery import Celery
from kombu import Connection

import config.celery
from mlregistry import services
from mlregistry.models import Stage
from mlregistry.webhooks import services as webhooks
from mlregistry.webhooks.models import DeliveryStatus, WebhookDelivery
from tests import factories, live
from tests.mlregistry.webhook_receiver import Receiver

BROKER_URL = os.environ.get("CELERY_TEST_BROKER_URL", "redis://127.0.0.1:6379/5")
ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

pytestmark = [pytest.mark.worker, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def _readme_verifier():
    text = README.read_text()
    section = text[text.index("### Verifying a delivery") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own lines
    return namespace["registry_signature_ok"]


def test_a_real_worker_delivers_signed_events_in_order_with_retries(settings, tmp_path):
    if not live.broker_answers(BROKER_URL):
        pytest.skip(f"no Celery broker answers at {BROKER_URL} (set CELERY_TEST_BROKER_URL)")
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    failures = defaultdict(int)

    def plan(previous, path, headers, body):
        # The first event of iris fails twice, then is accepted: nothing later about iris may
        # arrive before it is accepted.
        first_of_iris = b'"version":1,' in body and b'"name":"iris"' in body
        created = headers["x-registry-event"] == "model_version.created"
        if first_of_iris and created and failures["v1"] < 2:
            failures["v1"] += 1
            return 503, {}, b"try later"
        return 200, {}, b"ok"

    receiver = Receiver(plan=plan).start()
    queue = f"webhooks-test-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DATABASE_URL": live.test_database_url(),
        "CELERY_BROKER_URL": BROKER_URL,
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "MODEL_STORE_DIR": str(settings.MODEL_STORE_DIR),
        "VAR_DIR": str(tmp_path / "var"),
        "LOG_FORMAT": "json",
        "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "WEBHOOK_RETRY_BASE_SECONDS": "0.5",
        "WEBHOOK_RETRY_MAX_SECONDS": "1",
    }
    log_path = tmp_path / "worker.log"
    command = [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel=INFO"]
    # Several threads: deliveries really race, so the order is the sender's doing.
    command += ["--pool=threads", "--concurrency=4", "-Q", queue, "-n", f"{queue}@%h"]
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    # The services' on-commit enqueue publishes through the current Celery app: this one, on
    # the test broker and queue (Celery's shared tasks resolve the app when called).
    publisher = Celery("tests-webhooks", broker=BROKER_URL, set_as_current=False)
    publisher.conf.task_default_queue = queue
    try:
        hook = webhooks.webhook_create(
            name="ci",
            url=receiver.url + "/hook",
            events=["model_version.created", "model_version.stage_changed"],
            actor="tests",
        )
        publisher.set_current()
        try:
            iris = factories.registered_model_create("iris")
            other = factories.registered_model_create("other")
            v1 = factories.version_create(iris)
            factories.version_create(other)
            v2 = factories.version_create(iris, c=0.5)
            services.model_version_transition(version=v1, stage=Stage.PRODUCTION, actor="t")
            services.model_version_transition(version=v2, stage=Stage.STAGING, actor="t")
            services.model_version_transition(version=v2, stage=Stage.PRODUCTION, actor="t")
        finally:
            config.celery.app.set_current()
        expected = WebhookDelivery.objects.count()
        assert expected == 7  # 3 uploads, 4 stage changes (v1 archived by v2's promotion)

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and worker.poll() is None:
            if not WebhookDelivery.objects.exclude(status=DeliveryStatus.SUCCEEDED).exists():
                break
            time.sleep(0.5)
        log_text = log_path.read_text()
        assert not WebhookDelivery.objects.exclude(status=DeliveryStatus.SUCCEEDED).exists(), (
            log_text[-4000:]
        )
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        receiver.stop()
        publisher.close()
        try:
            with Connection(BROKER_URL, connect_timeout=2) as conn:
                conn.default_channel.queue_delete(queue)
        except Exception:  # noqa: S110 - a queue left behind is harmless
            pass

    received = receiver.received()
    verify = _readme_verifier()
    assert all(verify(hook.secret, r.body, r.headers["x-registry-signature"]) for r in received)
    accepted = [r for r in received if r.status == 200]
    # Exactly one accepted request per delivery, however many attempts it took.
    by_delivery = defaultdict(list)
    for r in received:
        by_delivery[r.headers["x-registry-delivery"]].append(r.status)
    assert len(accepted) == expected == len(by_delivery)
    first = WebhookDelivery.objects.filter(model_name="iris").order_by("id").first()
    assert by_delivery[str(first.delivery_id)] == [503, 503, 200]
    assert first.attempts.count() == 3
    # Per model, accepted in the order the events happened.
    for model_name in ("iris", "other"):
        happened = [
            str(d)
            for d in WebhookDelivery.objects.filter(model_name=model_name)
            .order_by("id")
            .values_list("delivery_id", flat=True)
        ]
        arrived = [
            r.headers["x-registry-delivery"]
            for r in accepted
            if r.json["data"]["name"] == model_name
        ]
        assert arrived == happened, model_name
    assert hook.secret not in log_text
    assert "webhook delivery attempted" in log_text
