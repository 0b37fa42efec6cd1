import io

import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from config.errors import NotFoundError, ValidationFailed
from mlregistry import services
from mlregistry.models import ModelVersion, Stage, StageTransition, VersionSource
from quality import training
from quality.models import TrainingDecision, TrainingJob, TrainingStatus
from quality.tasks import retraining_scheduled_task, training_job_run_task
from tests import factories

pytestmark = [pytest.mark.django_db, pytest.mark.storage]

NAMES = factories.IRIS_FEATURES


@pytest.fixture(autouse=True)
def _trust_trees(settings):
    settings.SKOPS_TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]


iris_dataset = factories.iris_dataset_create


def champion_create(model, estimator):
    x, y = factories.iris_frame()
    version = services.model_version_create(
        model=model, artifact=io.BytesIO(sio.dumps(estimator.fit(x, y))), actor="tests"
    )
    return services.model_version_transition(version=version, stage=Stage.PRODUCTION, actor="t")


def job_run(model, dataset, **kwargs) -> TrainingJob:
    job = training.training_job_create(
        model=model, dataset=dataset, actor="tests", enqueue=False, **kwargs
    )
    return training.training_job_run(job_id=job.pk)


def test_gate_promotes_a_better_candidate_through_the_transition_service(iris_model):
    champion = champion_create(iris_model, DecisionTreeClassifier(max_depth=1, random_state=0))

    job = job_run(
        iris_model,
        iris_dataset(),
        estimator="LogisticRegression",
        estimator_params={"C": 1.0, "max_iter": 500},
        policy="auto_promote",
        margin=0.05,
    )

    assert job.status == TrainingStatus.SUCCEEDED
    assert job.decision == TrainingDecision.PROMOTED
    assert job.candidate_score > job.champion_score + 0.05
    assert len(job.cv_scores) == 5
    candidate = job.candidate_version
    candidate.refresh_from_db()
    champion.refresh_from_db()
    assert candidate.stage == Stage.PRODUCTION
    assert champion.stage == Stage.ARCHIVED
    assert job.champion_version == champion
    actors = set(
        StageTransition.objects.filter(version=candidate).values_list("actor_name", flat=True)
    )
    assert actors == {f"job:training:{job.pk}"}
    assert "accuracy" in job.details["decision_reason"]


def test_gate_keeps_the_champion_when_the_candidate_is_worse(iris_model):
    champion = champion_create(iris_model, LogisticRegression(max_iter=500))

    job = job_run(
        iris_model,
        iris_dataset(),
        estimator="DecisionTreeClassifier",
        estimator_params={"max_depth": 1},
        policy="auto_promote",
    )

    assert job.decision == TrainingDecision.KEPT_CHAMPION
    assert job.candidate_score < job.champion_score
    champion.refresh_from_db()
    job.candidate_version.refresh_from_db()
    assert champion.stage == Stage.PRODUCTION
    assert job.candidate_version.stage == Stage.STAGING


def test_margin_keeps_the_champion_when_the_gain_is_too_small(iris_model):
    champion_create(iris_model, LogisticRegression(max_iter=500))
    job = job_run(iris_model, iris_dataset(), policy="auto_promote", margin=0.5)
    assert job.decision == TrainingDecision.KEPT_CHAMPION
    assert "margin 0.5000" in job.details["decision_reason"]


def test_candidate_is_registered_in_staging_with_metrics_reference_and_job_link(iris_model):
    champion_create(iris_model, LogisticRegression(C=0.5, max_iter=500))
    dataset = iris_dataset()

    job = job_run(iris_model, dataset)  # no estimator: clone production's

    assert job.decision == TrainingDecision.STAGED
    candidate = ModelVersion.objects.get(pk=job.candidate_version_id)
    assert candidate.stage == Stage.STAGING
    assert candidate.source == VersionSource.TRAINING
    assert candidate.params["C"] == 0.5
    assert set(candidate.metrics) == {"accuracy", "cv_accuracy_mean", "cv_accuracy_std"}
    assert candidate.metadata["training_job"] == job.pk
    assert candidate.metadata["dataset"] == "iris-data"
    assert candidate.training_job == job
    assert len(candidate.reference_sample) == job.details["train_rows"] == 120
    assert set(candidate.reference_stats) == set(NAMES)
    assert [f["name"] for f in candidate.input_schema] == NAMES


def test_auto_promote_without_a_champion_promotes_the_candidate(iris_model):
    job = job_run(
        iris_model,
        iris_dataset(),
        estimator="RandomForestClassifier",
        estimator_params={"n_estimators": 10},
        policy="auto_promote",
    )
    assert job.decision == TrainingDecision.PROMOTED_NO_CHAMPION
    job.candidate_version.refresh_from_db()
    assert job.candidate_version.stage == Stage.PRODUCTION


def test_without_production_or_estimator_the_job_fails_with_no_estimator(iris_model):
    job = job_run(iris_model, iris_dataset())
    assert (job.status, job.error_type) == (TrainingStatus.FAILED, "no_estimator")
    assert "name an estimator" in job.error


def test_a_retry_after_registration_reuses_the_candidate(iris_model):
    champion_create(iris_model, LogisticRegression(max_iter=500))
    job = training.training_job_create(
        model=iris_model, dataset=iris_dataset(), actor="tests", enqueue=False
    )
    # The first attempt registered its candidate, then its worker died before deciding.
    trained = training._train(job)
    training._candidate_register(job.pk, trained)
    versions_before = ModelVersion.objects.count()

    job = training_job_run_task.apply(args=[job.pk]).get()
    again = training_job_run_task.apply(args=[job_id := TrainingJob.objects.get().pk]).get()

    assert (job, again) == ("succeeded", "succeeded")
    assert ModelVersion.objects.count() == versions_before
    assert ModelVersion.objects.filter(source=VersionSource.TRAINING).count() == 1
    assert TrainingJob.objects.get(pk=job_id).attempts == 1


def test_a_concurrent_attempt_does_not_register_a_second_candidate(iris_model):
    champion_create(iris_model, LogisticRegression(max_iter=500))
    job = training.training_job_create(
        model=iris_model, dataset=iris_dataset(), actor="tests", enqueue=False
    )
    trained = training._train(job)
    first = training._candidate_register(job.pk, trained)
    second = training._candidate_register(job.pk, trained)
    assert first.candidate_version_id == second.candidate_version_id
    assert ModelVersion.objects.filter(source=VersionSource.TRAINING).count() == 1


def test_regression_models_train_with_kfold_and_r2(db):
    from sklearn.datasets import load_diabetes

    model = factories.registered_model_create("diabetes", task="regression")
    frame = load_diabetes(as_frame=True).frame
    dataset = training.dataset_create(
        name="diabetes",
        actor="tests",
        target_column="target",
        feature_columns=[c for c in frame.columns if c != "target"],
        file=io.BytesIO(frame.to_csv(index=False).encode()),
    )
    job = job_run(model, dataset, estimator="Ridge", estimator_params={"alpha": 1.0})
    assert job.status == TrainingStatus.SUCCEEDED
    assert job.metric == "r2"
    assert 0.2 < job.candidate_score < 0.8


def test_job_settings_are_checked_against_the_allow_list(iris_model):
    dataset = iris_dataset()

    def create(**kwargs):
        return training.training_job_create(
            model=iris_model, dataset=dataset, actor="t", enqueue=False, **kwargs
        )

    with pytest.raises(ValidationFailed) as unknown:
        create(estimator="os.system")
    assert "LogisticRegression" in unknown.value.fields["estimator"][0]
    with pytest.raises(ValidationFailed, match="not allowed for a classification"):
        create(estimator="Ridge")
    with pytest.raises(ValidationFailed) as bad_params:
        create(
            estimator="LogisticRegression",
            estimator_params={"C": -1, "max_iter": "10", "solver": "x", "fit_intercept": 1},
        )
    assert bad_params.value.fields == {
        "estimator_params.C": ["must be at least 1e-06"],
        "estimator_params.max_iter": ["must be an integer"],
        "estimator_params.solver": [
            "not an allowed parameter of LogisticRegression; allowed: C, class_weight, "
            "fit_intercept, max_iter"
        ],
        "estimator_params.fit_intercept": ["must be true or false"],
    }
    with pytest.raises(ValidationFailed, match="must be a JSON object"):
        create(estimator="LogisticRegression", estimator_params=[1])
    with pytest.raises(ValidationFailed, match="need an estimator"):
        create(estimator_params={"C": 1.0})
    with pytest.raises(ValidationFailed, match="Metric 'r2'"):
        create(metric="r2")
    with pytest.raises(ValidationFailed, match="Unknown policy"):
        create(policy="yolo")
    with pytest.raises(ValidationFailed) as ranges:
        create(margin=-1, cv_folds=1, holdout_fraction=0.9)
    assert set(ranges.value.fields) == {"margin", "cv_folds", "holdout_fraction"}


def test_tree_estimators_need_their_skops_types_trusted(iris_model, settings):
    settings.SKOPS_TRUSTED_TYPES = []
    with pytest.raises(ValidationFailed, match="SKOPS_TRUSTED_TYPES"):
        training.training_job_create(
            model=iris_model,
            dataset=iris_dataset(),
            actor="t",
            estimator="RandomForestClassifier",
            enqueue=False,
        )


def test_allow_list_values_are_type_and_range_checked():
    from quality.estimators import estimator_params_check

    check = estimator_params_check
    assert check(name="RandomForestClassifier", params={"max_depth": None}, task="classification")
    with pytest.raises(ValidationFailed, match="Invalid parameters"):
        check(name="RandomForestClassifier", params={"n_estimators": 5000}, task="classification")
    with pytest.raises(ValidationFailed, match="Invalid parameters"):
        check(name="LogisticRegression", params={"C": float("inf")}, task="classification")
    with pytest.raises(ValidationFailed, match="Invalid parameters"):
        check(name="LogisticRegression", params={"C": None}, task="classification")
    with pytest.raises(ValidationFailed, match="Invalid parameters"):
        check(name="DecisionTreeClassifier", params={"class_weight": "x"}, task="classification")


def test_scheduled_retraining_runs_each_recurring_job_once_a_day(
    iris_model, django_capture_on_commit_callbacks
):
    champion_create(iris_model, LogisticRegression(max_iter=500))
    template = training.training_job_create(
        model=iris_model, dataset=iris_dataset(), actor="tests", recurring=True, enqueue=False
    )
    training.training_job_create(
        model=iris_model, dataset=template.dataset, actor="tests", enqueue=False
    )

    with django_capture_on_commit_callbacks() as callbacks:
        first = retraining_scheduled_task.apply().get()
        second = retraining_scheduled_task.apply().get()

    assert len(first) == 1
    assert second == []
    run = TrainingJob.objects.get(pk=first[0])
    assert run.template == template
    assert (run.policy, run.metric, run.recurring) == (template.policy, "accuracy", False)
    assert len(callbacks) == 1  # the new run is enqueued after commit


def test_creating_a_job_enqueues_it_after_commit(iris_model, django_capture_on_commit_callbacks):
    dataset = iris_dataset()
    with django_capture_on_commit_callbacks() as callbacks:
        job = training.training_job_create(model=iris_model, dataset=dataset, actor="t")
    assert len(callbacks) == 1
    assert job.status == TrainingStatus.QUEUED


def test_finished_jobs_are_left_alone(iris_model):
    job = job_run(iris_model, iris_dataset())
    assert job.status == TrainingStatus.FAILED
    again = training.training_job_run(job_id=job.pk)
    assert (again.status, again.attempts) == (TrainingStatus.FAILED, 1)


def test_a_job_whose_worker_keeps_dying_is_failed_instead_of_started_again(iris_model, settings):
    settings.JOB_MAX_ATTEMPTS = 3
    champion_create(iris_model, LogisticRegression(max_iter=500))
    job = training.training_job_create(
        model=iris_model, dataset=iris_dataset(), actor="tests", enqueue=False
    )
    # Three starts whose worker died mid-run (SIGKILL leaves the row running, nothing else).
    TrainingJob.objects.filter(pk=job.pk).update(status=TrainingStatus.RUNNING, attempts=3)

    assert training_job_run_task.apply(args=[job.pk]).get() == "failed"
    job.refresh_from_db()
    assert (job.status, job.error_type, job.attempts) == (TrainingStatus.FAILED, "worker_lost", 3)
    assert "started 3 times without finishing" in job.error
    assert not ModelVersion.objects.filter(source=VersionSource.TRAINING).exists()


def test_dataset_without_the_champions_features_fails_the_job(iris_model):
    champion_create(iris_model, LogisticRegression(max_iter=500))
    x, y = factories.iris_frame()
    frame = x.drop(columns=["petal_width"]).assign(species=y)
    dataset = training.dataset_create(
        name="three-features",
        actor="t",
        target_column="species",
        feature_columns=NAMES[:3],
        file=io.BytesIO(frame.to_csv(index=False).encode()),
    )
    job = job_run(iris_model, dataset, estimator="LogisticRegression")
    assert (job.status, job.error_type) == (TrainingStatus.FAILED, "missing_columns")
    assert "'petal_width'" in job.error


def test_champion_replaced_during_the_job_keeps_the_new_champion(iris_model):
    champion_create(iris_model, DecisionTreeClassifier(max_depth=1, random_state=0))
    job = training.training_job_create(
        model=iris_model,
        dataset=iris_dataset(),
        actor="tests",
        estimator="LogisticRegression",
        policy="auto_promote",
        enqueue=False,
    )
    training._candidate_register(job.pk, training._train(job))
    # Someone promotes another version between training and the decision.
    newcomer = factories.version_create(iris_model, c=3.0)
    services.model_version_transition(version=newcomer, stage=Stage.PRODUCTION, actor="ops")

    job = training.training_job_run(job_id=job.pk)

    assert job.decision == TrainingDecision.KEPT_CHAMPION
    assert "changed while the job ran" in job.details["decision_reason"]
    newcomer.refresh_from_db()
    assert newcomer.stage == Stage.PRODUCTION


def test_a_message_for_a_deleted_job_is_dropped(db):
    assert training_job_run_task.apply(args=[12345]).get() == "missing"


def test_operators_run_jobs_from_the_command_line(iris_model, capsys):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    champion_create(iris_model, LogisticRegression(max_iter=500))
    dataset = iris_dataset()
    job = training.training_job_create(
        model=iris_model, dataset=dataset, actor="t", recurring=True, enqueue=False
    )

    call_command("training_job_run", str(job.pk), "--scheduled")

    out = capsys.readouterr().out
    assert f"job #{job.pk}: succeeded (staged)" in out
    assert out.count("succeeded (staged)") == 2  # the job and today's scheduled run of it
    with pytest.raises(CommandError, match="does not exist"):
        call_command("training_job_run", "999")
    with pytest.raises(CommandError, match="--scheduled"):
        call_command("training_job_run")


def test_a_candidate_deleted_before_the_decision_fails_the_job_cleanly(iris_model):
    champion_create(iris_model, LogisticRegression(max_iter=500))
    job = training.training_job_create(
        model=iris_model, dataset=iris_dataset(), actor="tests", enqueue=False
    )
    registered = training._candidate_register(job.pk, training._train(job))
    services.model_version_delete(version=registered.candidate_version, actor="tests")
    with pytest.raises(NotFoundError, match="candidate version was deleted"):
        training._decide(job.pk)


def test_a_job_deleted_while_it_ran_drops_its_message(iris_model):
    job = training.training_job_create(
        model=iris_model, dataset=iris_dataset(), actor="tests", enqueue=False
    )
    TrainingJob.objects.filter(pk=job.pk).delete()
    with pytest.raises(NotFoundError):
        training._fail(job.pk, problem="x", message="y")
    with pytest.raises(NotFoundError):
        training._candidate_register(job.pk, None)
