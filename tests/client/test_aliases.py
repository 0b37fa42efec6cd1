"""The client's aliases, tags, lineage and filters, against a live server."""

from __future__ import annotations

import pytest
from mlregistry_client import (
    BatchPrediction,
    Conflict,
    ModelAlias,
    NotFound,
    Prediction,
    Registry,
    ValidationError,
)

from tests import factories
from tests.live import IRIS_ROW, iris_named_classifier

pytestmark = pytest.mark.django_db(transaction=True)

SHA = "0f" * 32


def test_aliases_tags_and_lineage_through_the_client(live_world):
    x, _ = factories.iris_frame()
    with Registry(live_world.url, live_world.staff) as registry:
        mv = registry.log_model(
            iris_named_classifier(),
            "churn",
            input_example=x.head(),
            tags={"validated": "true", "team": "risk"},
            run_id="run-7",
            git_commit="ABCDEF1234",
            source_url="https://ci.example.com/runs/7",
            training_dataset={"uri": "s3://data/iris.csv", "sha256": SHA},
        )
        assert mv.tags == {"team": "risk", "validated": "true"}
        assert (mv.run_id, mv.git_commit) == ("run-7", "abcdef1234")
        assert mv.source_url == "https://ci.example.com/runs/7"
        assert mv.training_dataset == {"uri": "s3://data/iris.csv", "sha256": SHA}
        with pytest.raises(ValidationError) as bad:
            registry.log_model(iris_named_classifier(), "churn", git_commit="nope")
        assert "git_commit" in bad.value.fields
        v2 = registry.log_model(iris_named_classifier(), "churn", run_id="run-8")

        alias = registry.set_alias("churn", "champion", 1, comment="first")
        assert isinstance(alias, ModelAlias)
        assert (alias.alias, alias.version, alias.updated_by) == ("champion", 1, "staff")
        assert [a.alias for a in registry.list_aliases("churn")] == ["champion"]
        assert registry.get_version("churn", alias="champion").aliases == ["champion"]
        assert registry.get_version("churn", alias="latest").version == v2.version

        one = registry.predict("churn", IRIS_ROW, alias="champion")
        assert isinstance(one, Prediction)
        assert (one.model_version, one.alias) == (1, "champion")
        batch = registry.predict("churn", [IRIS_ROW, IRIS_ROW], alias="champion")
        assert isinstance(batch, BatchPrediction) and batch.alias == "champion"
        frame = registry.predict("churn", x.head(3), alias="latest")
        assert frame.attrs["alias"] == "latest" and frame.attrs["model_version"] == 2
        array = registry.predict("churn", x.head(2).to_numpy(), alias="champion")
        assert array.model_version == 1

        registry.set_alias("churn", "champion", 2)
        assert registry.predict("churn", IRIS_ROW, alias="champion").model_version == 2
        assert [v.version for v in registry.list_versions("churn", alias="champion")] == [2]
        assert [v.version for v in registry.list_versions("churn", run_id="run-7")] == [1]
        tagged = registry.set_version_tags("churn", 1, {"validated": None, "owner": "ana"})
        assert tagged.tags == {"owner": "ana", "team": "risk"}
        assert [v.version for v in registry.list_versions("churn", tags={"owner": "ana"})] == [1]
        assert [v.version for v in registry.list_versions("churn", tags={"owner": None})] == [1]

        with pytest.raises(ValidationError):
            registry.set_alias("churn", "latest", 1)
        registry.transition("churn", 1, "archived")
        with pytest.raises(Conflict):
            registry.set_alias("churn", "shadow", 1)
        registry.delete_alias("churn", "champion")
        with pytest.raises(NotFound):
            registry.delete_alias("churn", "champion")
        with pytest.raises(NotFound):
            registry.predict("churn", IRIS_ROW, alias="champion")
        with pytest.raises(ValueError):
            registry.predict("churn", IRIS_ROW, alias="champion", version=1)
        with pytest.raises(ValueError):
            registry.get_version("churn")


def test_models_carry_key_value_tags_and_filter(live_world):
    with Registry(live_world.url, live_world.staff) as registry:
        created = registry.create_model("fraud", tags={"team": "risk"}, description="card fraud")
        assert created.tags == {"team": "risk"}
        assert registry.create_model("legacy", tags=["demo"]).tags == {"demo": ""}
        assert [m.name for m in registry.list_models(tags={"team": "risk"})] == ["fraud"]
        assert [m.name for m in registry.list_models(search="CARD")] == ["fraud"]
        assert [m.name for m in registry.list_models(tags={"demo": None})] == ["legacy"]
