"""Which calls the client sends again on a 503: a rollback the server committed before its
database went away must not run twice. Against the real application through httpx's WSGI
transport; the database failure is a fault injected on purpose (an OperationalError raised
once while the answer is built, after the commit)."""

from __future__ import annotations

import httpx
import pytest
from django.db import OperationalError
from mlregistry_client import Registry, Unavailable

from config.wsgi import application
from mlregistry import services, views
from mlregistry.models import ModelVersion, Stage, StageTransition
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def registry(settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {}}
    model = factories.registered_model_create("iris")
    for c in (1.0, 0.5, 0.25):
        version = factories.version_create(model, c=c)
        services.model_version_transition(version=version, stage=Stage.PRODUCTION, actor="t")
    root = factories.user_create("root", staff=True)
    root.is_superuser = True
    root.save()
    transport = httpx.WSGITransport(app=application)
    with Registry(
        "http://testserver", factories.token_create(root), transport=transport, backoff=0.01
    ) as client:
        yield client


def _answer_fails_once(monkeypatch, name: str) -> dict:
    real = getattr(views, name)
    state = {"calls": 0}

    class FailsOnce(real):
        @property
        def data(self):
            state["calls"] += 1
            if state["calls"] == 1:
                raise OperationalError("server closed the connection unexpectedly")
            return super().data

    monkeypatch.setattr(views, name, FailsOnce)
    return state


def test_a_rollback_answered_503_after_its_commit_is_not_sent_again(registry, monkeypatch):
    state = _answer_fails_once(monkeypatch, "ModelVersionTransitionOutput")

    with pytest.raises(Unavailable):
        registry.rollback("iris", comment="v3 misbehaves")

    assert state["calls"] == 1
    assert StageTransition.objects.filter(comment="v3 misbehaves").count() == 1
    assert ModelVersion.objects.get(version=2).stage == Stage.PRODUCTION


def test_a_read_answered_503_is_sent_again(registry, monkeypatch):
    state = _answer_fails_once(monkeypatch, "RegisteredModelOutput")

    model = registry.get_model("iris")

    assert model.name == "iris"
    assert state["calls"] == 2


def test_a_delete_answered_503_after_its_commit_is_done_when_the_retry_finds_nothing(
    registry, monkeypatch
):
    from mlregistry.models import ModelAlias

    real = services.model_alias_delete
    calls = []

    def deletes_then_fails(**kwargs):
        calls.append(1)
        real(**kwargs)
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")

    registry.set_alias("iris", "champion", 3)
    monkeypatch.setattr(services, "model_alias_delete", deletes_then_fails)

    registry.delete_alias("iris", "champion")  # no NotFound: the retry found it deleted

    assert len(calls) == 2
    assert not ModelAlias.objects.filter(alias="champion").exists()
