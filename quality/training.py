"""Services of the model-quality loop: datasets, training jobs, the champion/challenger gate.

A training job trains a candidate on a dataset, cross-validates it, scores it and the current
production version (the champion) on the same holdout, registers the candidate in staging and,
if the job's policy allows and the candidate wins by the margin, promotes it. Stage changes go
through services.model_version_transition with the actor "job:training:<id>".
"""

from __future__ import annotations

import io
import logging
import math
import statistics
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import PurePath
from typing import IO, Any

from django.conf import settings
from django.core.files import File
from django.db import IntegrityError, OperationalError, transaction
from django.utils import timezone

from config.dispatch import Sending, send_on_commit
from config.errors import ConflictError, DomainError, NotFoundError, ValidationFailed
from config.events import event_publish
from config.job_heartbeats import job_heartbeat
from mlregistry import artifacts, lineage, selectors, services
from mlregistry.audit import audit_record, created_changes, deleted_changes
from mlregistry.models import ModelVersion, RegisteredModel, Stage, Task, VersionSource
from mlregistry.storage import get_artifact_storage
from quality import datasets, estimators
from quality.models import (
    RANDOM_STATE_MAX,
    Dataset,
    DatasetSource,
    FileFormat,
    MissingPolicy,
    TrainingDecision,
    TrainingJob,
    TrainingPolicy,
    TrainingStatus,
)

logger = logging.getLogger(__name__)


# --- Datasets ---------------------------------------------------------------------------------


def _columns_check(*, target_column: str, feature_columns: Any) -> list[str]:
    if (
        not isinstance(feature_columns, list)
        or not feature_columns
        or not all(isinstance(c, str) and c for c in feature_columns)
    ):
        raise ValidationFailed(
            "feature_columns must be a non-empty list of column names.",
            fields={"feature_columns": ["must be a non-empty list of strings"]},
        )
    if len(set(feature_columns)) != len(feature_columns):
        raise ValidationFailed(
            "feature_columns lists a column twice.",
            fields={"feature_columns": ["duplicate column names"]},
        )
    if not target_column:
        raise ValidationFailed("target_column is required.", fields={"target_column": ["required"]})
    if target_column in feature_columns:
        raise ValidationFailed(
            "The target column cannot also be a feature.",
            fields={"feature_columns": [f"must not include the target {target_column!r}"]},
        )
    return list(feature_columns)


def _file_format(upload: Any, file_format: str | None) -> str:
    if file_format:
        if file_format not in FileFormat.values:
            raise ValidationFailed(
                f"Unknown file format {file_format!r}.",
                fields={"file_format": [f"must be one of {', '.join(FileFormat.values)}"]},
            )
        return file_format
    suffix = PurePath(getattr(upload, "name", "") or "").suffix.lower()
    if suffix in (".parquet", ".pq"):
        return FileFormat.PARQUET
    return FileFormat.CSV


def dataset_create(
    *,
    name: str,
    actor: services.Actor,
    target_column: str,
    feature_columns: list[str],
    file: IO[bytes] | None = None,
    file_format: str | None = None,
    sql_connection: str = "",
    sql_query: str = "",
    missing_policy: str = MissingPolicy.DROP,
    description: str = "",
) -> Dataset:
    """Registers a dataset: an uploaded CSV/Parquet file (stored under its SHA-256, its header
    checked now) or a read-only SQL query against a configured connection (checked, not run)."""
    features = _columns_check(target_column=target_column, feature_columns=feature_columns)
    if missing_policy not in MissingPolicy.values:
        raise ValidationFailed(
            f"Unknown missing-value policy {missing_policy!r}.",
            fields={"missing_policy": [f"must be one of {', '.join(MissingPolicy.values)}"]},
        )
    if (file is None) == (not sql_query):
        raise ValidationFailed(
            "Give either a file or an SQL query (not both).",
            fields={"file": ["a file or sql_query is required, not both"]},
        )
    values: dict[str, Any] = {}
    if file is not None:
        fmt = _file_format(file, file_format)
        spooled = artifacts.spool_upload(file, max_size=settings.DATASET_MAX_UPLOAD_SIZE)
        try:
            data = spooled.read()
            try:
                header = datasets.read_table(data, fmt, nrows=5)
            except datasets.DatasetError as exc:
                # The same problem, said of the field that brought the file.
                raise datasets.DatasetError(
                    exc.problem, exc.message, fields=exc.fields or {"file": [exc.message]}
                ) from None
            datasets.columns_check(header, target_column=target_column, feature_columns=features)
            stored = get_artifact_storage().save(
                f"datasets/{spooled.sha256[:2]}/{spooled.sha256}.{fmt}",
                File(spooled.file, name=f"{spooled.sha256}.{fmt}"),
            )
        finally:
            spooled.file.close()
        values = {
            "source": DatasetSource.FILE,
            "file": stored,
            "file_format": fmt,
            "file_sha256": spooled.sha256,
            "file_size": spooled.size,
        }
        if fmt == FileFormat.PARQUET:
            values["file_block_size"], values["file_block_sha256"] = artifacts.block_digests(data)
    else:
        datasets.sql_connection_alias(sql_connection)
        values = {
            "source": DatasetSource.SQL,
            "sql_connection": sql_connection,
            "sql_query": datasets.sql_query_check(sql_query),
        }
    user, _ = services._actor_fields(actor)
    try:
        with transaction.atomic():
            dataset = Dataset.objects.create(
                name=name,
                description=description,
                target_column=target_column,
                feature_columns=features,
                missing_policy=missing_policy,
                created_by=user,
                **values,
            )
            audit_record(actor=actor, verb="create", obj=dataset, changes=created_changes(dataset))
            return dataset
    except IntegrityError:
        raise ConflictError(
            f"A dataset named {name!r} already exists.", fields={"name": ["already exists"]}
        ) from None


# --- Training jobs: creation ------------------------------------------------------------------


def training_job_enqueue(*, job: TrainingJob, fail_unsent: bool = True) -> Sending:
    """Sends the job to a worker once the current transaction commits. If the broker does not
    take it and `fail_unsent`, the job is failed `unavailable` (no worker would ever run it);
    the returned Sending says whether the send failed once the transaction has committed."""
    job_id = job.pk

    def send() -> None:
        from quality.tasks import training_job_run_task

        training_job_run_task.delay(job_id)

    def unsent(reason: str) -> None:
        if fail_unsent:
            _fail(
                job_id,
                problem="unavailable",
                message=f"The job could not be sent to a worker ({reason}); create it again "
                "once the broker is back.",
            )

    return send_on_commit(send, task="training_job_run_task", on_failure=unsent)


# A job's audit diff holds what its creator chose; its progress and results are the job's own.
_JOB_AUDITED_FIELDS = (
    "model",
    "dataset",
    "estimator",
    "estimator_params",
    "policy",
    "metric",
    "margin",
    "cv_folds",
    "holdout_fraction",
    "random_state",
    "recurring",
    "template",
    "created_by",
)


def training_job_create(
    *,
    model: RegisteredModel,
    dataset: Dataset,
    actor: services.Actor,
    estimator: str = "",
    estimator_params: dict[str, Any] | None = None,
    policy: str = TrainingPolicy.STAGE_ONLY,
    metric: str = "",
    margin: float = 0.0,
    cv_folds: int = 5,
    holdout_fraction: float = 0.2,
    random_state: int = 0,
    recurring: bool = False,
    template: TrainingJob | None = None,
    enqueue: bool = True,
) -> TrainingJob:
    """Records a training job after checking its settings; a worker runs it after commit."""
    if estimator:
        estimator_params = estimators.estimator_params_check(
            name=estimator, params=estimator_params, task=model.task
        )
    elif estimator_params:
        raise ValidationFailed(
            "estimator_params need an estimator; without one the production version's "
            "estimator is cloned with its own parameters.",
            fields={"estimator_params": ["only with estimator"]},
        )
    metric = estimators.metric_check(metric=metric, task=model.task)
    if policy not in TrainingPolicy.values:
        raise ValidationFailed(
            f"Unknown policy {policy!r}.",
            fields={"policy": [f"must be one of {', '.join(TrainingPolicy.values)}"]},
        )
    errors: dict[str, list[str]] = {}
    if not (isinstance(margin, int | float) and math.isfinite(margin) and margin >= 0):
        errors["margin"] = ["must be a number of at least 0"]
    if not (isinstance(cv_folds, int) and 2 <= cv_folds <= 20):
        errors["cv_folds"] = ["must be an integer from 2 to 20"]
    if not (isinstance(holdout_fraction, int | float) and 0.05 <= holdout_fraction <= 0.5):
        errors["holdout_fraction"] = ["must be between 0.05 and 0.5"]
    if not (isinstance(random_state, int) and 0 <= random_state <= RANDOM_STATE_MAX):
        errors["random_state"] = [f"must be an integer from 0 to {RANDOM_STATE_MAX}"]
    if errors:
        raise ValidationFailed("Invalid training job settings.", fields=errors)
    user, _ = services._actor_fields(actor)
    with transaction.atomic():
        job = TrainingJob.objects.create(
            model=model,
            dataset=dataset,
            estimator=estimator,
            estimator_params=estimator_params or {},
            policy=policy,
            metric=metric,
            margin=float(margin),
            cv_folds=cv_folds,
            holdout_fraction=float(holdout_fraction),
            random_state=random_state,
            recurring=recurring,
            template=template,
            created_by=user,
        )
        audit_record(
            actor=actor, verb="create", obj=job, changes=created_changes(job, _JOB_AUDITED_FIELDS)
        )
        sending = training_job_enqueue(job=job) if enqueue else None
    logger.info("training job created", extra={"job": job.pk, "model": model.name})
    if sending is not None:
        sending.raise_if_failed(
            f"Training job {job.pk} is recorded but could not be sent to a worker, so it is "
            "marked failed; create it again once the broker is back"
        )
    return job


def training_job_delete(*, job: TrainingJob, actor: services.Actor) -> None:
    """Deletes a training job's record; the version it registered stays (it is the registry's).

    ConflictError (409) while the job runs: its worker would register a candidate with no job
    to record the decision. NotFoundError (404) when a concurrent delete got there first. A
    queued job's message finds no job and is dropped (training_job_run_task)."""
    with transaction.atomic():
        current = TrainingJob.objects.select_for_update().filter(pk=job.pk).first()
        if current is None:
            raise NotFoundError(f"Training job #{job.pk} was already deleted.")
        if current.status == TrainingStatus.RUNNING:
            raise ConflictError(
                f"Training job #{current.pk} is running; wait for it to finish (or for the "
                "stalled-job reaper to fail it) before deleting it.",
                fields={"status": ["is running"]},
            )
        audit_record(
            actor=actor,
            verb="delete",
            obj=current,
            changes=deleted_changes(current, _JOB_AUDITED_FIELDS),
        )
        current.delete()
    logger.info("training job deleted", extra={"job": job.pk})


def dataset_delete(*, dataset: Dataset, actor: services.Actor) -> None:
    """Deletes a dataset; its file is left for the retention sweep (unreferenced files go).

    ConflictError (409) while a training job names it: jobs record what they trained on.
    NotFoundError (404) when a concurrent delete got there first."""
    with transaction.atomic():
        current = Dataset.objects.select_for_update().filter(pk=dataset.pk).first()
        if current is None:
            raise NotFoundError(f"Dataset {dataset.name} was already deleted.")
        jobs = list(current.training_jobs.order_by("pk").values_list("pk", flat=True)[:6])
        if jobs:
            listed = ", ".join(f"#{pk}" for pk in jobs[:5]) + (", ..." if len(jobs) > 5 else "")
            raise ConflictError(
                f"Dataset {current.name} is what training jobs {listed} trained on; delete "
                "those jobs first.",
                fields={"dataset": ["used by training jobs"]},
            )
        audit_record(actor=actor, verb="delete", obj=current, changes=deleted_changes(current))
        current.delete()
    logger.info("dataset deleted", extra={"dataset": dataset.name})


def retraining_schedule_run(*, now: datetime | None = None) -> list[TrainingJob]:
    """Starts one run of every model's newest recurring job, at most one per template a day."""
    today = timezone.localdate(now or timezone.now())
    created = []
    templates = (
        TrainingJob.objects.filter(recurring=True)
        .select_related("model", "dataset")
        .order_by("model_id", "-created_at", "-id")
    )
    seen: set[int] = set()
    for template in templates:
        if template.model_id in seen:
            continue
        seen.add(template.model_id)
        with transaction.atomic():
            locked = TrainingJob.objects.select_for_update().filter(pk=template.pk).first()
            if locked is None:
                continue  # deleted since the listing: nothing to schedule
            # A retried or duplicated schedule tick finds today's run and adds none.
            if locked.scheduled_runs.filter(created_at__date=today).exists():
                continue
            created.append(
                training_job_create(
                    model=template.model,
                    dataset=template.dataset,
                    actor="job:retraining-schedule",
                    estimator=template.estimator,
                    estimator_params=template.estimator_params,
                    policy=template.policy,
                    metric=template.metric,
                    margin=template.margin,
                    cv_folds=template.cv_folds,
                    holdout_fraction=template.holdout_fraction,
                    random_state=template.random_state,
                    template=locked,
                )
            )
    return created


# --- Training jobs: running -------------------------------------------------------------------


@dataclass
class Trained:
    estimator: Any
    input_schema: list[dict[str, Any]]
    reference_rows: list[dict[str, Any]]
    cv_scores: list[float]
    candidate_score: float
    champion: ModelVersion | None
    champion_score: float | None
    details: dict[str, Any] = field(default_factory=dict)
    # SHA-256 of the data trained on: the file's, or (SQL) of the rows read, as CSV.
    data_sha256: str = ""


class TrainingFailed(DomainError):
    error_type = "training_error"

    def __init__(self, problem: str, message: str):
        super().__init__(message)
        self.problem = problem


def _target_check(job: TrainingJob, target: Any) -> Any:
    import pandas as pd

    name = job.dataset.target_column
    if job.model.task == Task.REGRESSION:
        numbers = pd.to_numeric(target, errors="coerce")
        if numbers.isna().any():
            raise datasets.DatasetError(
                "non_numeric", f"The target column {name!r} of a regression must hold numbers."
            )
        return numbers
    counts = target.value_counts()
    if len(counts) < 2:
        only = ", ".join(map(repr, counts.index.tolist())) or "none"
        raise datasets.DatasetError(
            "target_classes",
            f"The target column {name!r} has {len(counts)} class ({only}); "
            "a classifier needs at least two.",
        )
    needed = max(job.cv_folds, 2)
    rare = {str(k): int(v) for k, v in counts.items() if v < needed}
    if rare:
        shown = ", ".join(f"{k} ({v})" for k, v in list(rare.items())[:10])
        more = f" and {len(rare) - 10} more" if len(rare) > 10 else ""
        raise datasets.DatasetError(
            "target_classes",
            f"{len(rare)} target class(es) have fewer than {needed} rows "
            f"(cv_folds={job.cv_folds}): {shown}{more}. Is {name!r} really a class label?",
        )
    return target


def _schema_for(features: Any, names: list[str]) -> list[dict[str, Any]]:
    import pandas as pd

    return [
        {
            "name": name,
            "type": "integer" if pd.api.types.is_integer_dtype(features[name]) else "float",
            "required": True,
        }
        for name in names
    ]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise TrainingFailed("metric_not_finite", f"The metric came out as {value}.")
    return float(value)


def _train(job: TrainingJob) -> Trained:
    from sklearn.base import clone
    from sklearn.metrics import get_scorer
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score, train_test_split

    loaded = datasets.dataset_load(job.dataset)
    data_sha256 = job.dataset.file_sha256 or lineage.frame_sha256(loaded.features, loaded.target)
    target = _target_check(job, loaded.target)
    features = loaded.features
    classification = job.model.task == Task.CLASSIFICATION
    holdout_rows = math.ceil(len(features) * job.holdout_fraction)
    classes = target.nunique() if classification else 1
    if len(features) < 2 * job.cv_folds or holdout_rows < classes:
        raise datasets.DatasetError(
            "too_few_rows",
            f"{len(features)} usable rows are too few for {job.cv_folds}-fold cross-validation "
            f"and a holdout of {job.holdout_fraction:.0%} holding every class.",
        )
    champion = selectors.production_version_get(model=job.model)
    champion_estimator = (
        artifacts.load_version_estimator(champion) if champion is not None else None
    )
    champion_names = [f["name"] for f in champion.input_schema] if champion else []
    missing = [n for n in champion_names if n not in features.columns]
    if missing:
        raise datasets.DatasetError(
            "missing_columns",
            f"The production version v{champion.version} needs feature(s) "
            f"{', '.join(map(repr, missing))} that the dataset does not provide.",
        )

    if job.estimator:
        estimator = estimators.estimator_build(
            name=job.estimator,
            params=job.estimator_params,
            task=job.model.task,
            random_state=job.random_state,
        )
        names = list(job.dataset.feature_columns)
        same_features = champion is not None and names == champion_names
        schema = champion.input_schema if same_features else _schema_for(features, names)
    elif champion_estimator is not None:
        estimator = clone(champion_estimator)
        names, schema = champion_names, champion.input_schema
    else:
        raise TrainingFailed(
            "no_estimator",
            f"Model {job.model.name!r} has no production version to clone; name an estimator.",
        )

    x_train, x_holdout, y_train, y_holdout = train_test_split(
        features[names],
        target,
        test_size=job.holdout_fraction,
        random_state=job.random_state,
        stratify=target if classification else None,
    )
    splitter = (StratifiedKFold if classification else KFold)(
        n_splits=job.cv_folds, shuffle=True, random_state=job.random_state
    )
    cv_scores = cross_val_score(
        clone(estimator), x_train, y_train, cv=splitter, scoring=job.metric, error_score="raise"
    )
    estimator.fit(x_train, y_train)
    scorer = get_scorer(job.metric)
    candidate_score = _finite(scorer(estimator, x_holdout, y_holdout))

    champion_score = None
    details: dict[str, Any] = {
        "dataset": loaded.notes,
        "train_rows": len(x_train),
        "holdout_rows": len(x_holdout),
        "features": names,
    }
    if champion_estimator is not None:
        champion_x = x_holdout[champion_names]
        if getattr(champion_estimator, "feature_names_in_", None) is None:
            champion_x = champion_x.to_numpy()
        try:
            champion_score = _finite(scorer(champion_estimator, champion_x, y_holdout))
        except (ValueError, TypeError, TrainingFailed) as exc:
            details["champion_error"] = f"{type(exc).__name__}: {exc}"[:500]

    limit = settings.REFERENCE_SAMPLE_MAX_ROWS
    reference = x_train.sample(n=min(limit, len(x_train)), random_state=job.random_state)
    return Trained(
        estimator=estimator,
        input_schema=schema,
        reference_rows=reference.to_dict(orient="records"),
        cv_scores=[_finite(s) for s in cv_scores],
        candidate_score=candidate_score,
        champion=champion,
        champion_score=champion_score,
        details=details,
        data_sha256=data_sha256,
    )


def _job_locked(job_id: int, *related: str) -> TrainingJob:
    """The job's row, locked; NotFoundError when it was deleted (with its model, say) while it
    ran: the task then drops the message instead of failing on a missing row."""
    job = TrainingJob.objects.select_for_update().select_related(*related).filter(pk=job_id).first()
    if job is None:
        raise NotFoundError(f"Training job {job_id} does not exist (deleted?).")
    return job


def _candidate_register(job_id: int, trained: Trained) -> TrainingJob:
    import skops.io as sio

    with transaction.atomic():
        job = _job_locked(job_id, "model", "dataset")
        if job.candidate_version_id is not None:
            return job  # a concurrent attempt registered it first
        metric = job.metric
        version = services.model_version_create(
            model=job.model,
            artifact=io.BytesIO(sio.dumps(trained.estimator)),
            actor=job.actor_name,
            input_schema=trained.input_schema,
            metrics={
                metric: trained.candidate_score,
                f"cv_{metric}_mean": statistics.fmean(trained.cv_scores),
                f"cv_{metric}_std": statistics.pstdev(trained.cv_scores),
            },
            metadata={
                "training_job": job.pk,
                "dataset": job.dataset.name,
                "dataset_id": job.dataset_id,
                "estimator": job.estimator or "clone of production",
                "champion_version": trained.champion.version if trained.champion else None,
            },
            reference_sample=trained.reference_rows,
            source=VersionSource.TRAINING,
            # Lineage of the product's own runs: the job, the data and this code's commit.
            run_id=f"training-job:{job.pk}",
            git_commit=lineage.code_version() or None,
            training_dataset={
                "uri": lineage.dataset_uri(job.dataset),
                "sha256": trained.data_sha256,
            },
        )
        services.model_version_transition(
            version=version,
            stage=Stage.STAGING,
            actor=job.actor_name,
            comment=f"candidate of training job #{job.pk}",
        )
        job.candidate_version = version
        job.cv_scores = trained.cv_scores
        job.candidate_score = trained.candidate_score
        job.champion_version = trained.champion
        job.champion_score = trained.champion_score
        job.details = {**job.details, **trained.details}
        job.save(
            update_fields=[
                "candidate_version",
                "cv_scores",
                "candidate_score",
                "champion_version",
                "champion_score",
                "details",
            ]
        )
    return job


def _decide(job_id: int) -> TrainingJob:
    with transaction.atomic():
        job = _job_locked(job_id, "model")
        if job.status in (TrainingStatus.SUCCEEDED, TrainingStatus.FAILED):
            # The first end stands: a job the reaper failed while its worker was only stalled
            # is not promoted (nor announced) a second time; its candidate stays registered.
            return job
        candidate = ModelVersion.objects.filter(pk=job.candidate_version_id).first()
        if candidate is None:
            raise NotFoundError(
                "The candidate version was deleted before the decision; nothing was promoted."
            )
        current = selectors.production_version_get(model=job.model)
        promote = False
        if job.policy != TrainingPolicy.AUTO_PROMOTE:
            decision, reason = TrainingDecision.STAGED, "policy is stage_only"
        elif current is None and job.champion_version_id is None:
            promote = True
            decision, reason = TrainingDecision.PROMOTED_NO_CHAMPION, "no production version"
        elif current is None or current.pk != job.champion_version_id:
            decision = TrainingDecision.KEPT_CHAMPION
            reason = "the production version changed while the job ran; compare again"
        elif job.champion_score is None:
            decision = TrainingDecision.KEPT_CHAMPION
            reason = "the champion could not be scored on the holdout"
        else:
            gain = job.candidate_score - job.champion_score
            promote = gain > job.margin
            decision = TrainingDecision.PROMOTED if promote else TrainingDecision.KEPT_CHAMPION
            reason = (
                f"{job.metric}: candidate {job.candidate_score:.4f} vs champion "
                f"{job.champion_score:.4f} (gain {gain:+.4f}, margin {job.margin:.4f})"
            )
        if promote:
            services.model_version_transition(
                version=candidate,
                stage=Stage.PRODUCTION,
                actor=job.actor_name,
                comment=f"training job #{job.pk}: {reason}",
            )
        job.decision = decision
        job.details = {**job.details, "decision_reason": reason}
        job.status = TrainingStatus.SUCCEEDED
        job.finished_at = timezone.now()
        job.save(update_fields=["decision", "details", "status", "finished_at"])
        training_job_finished_publish(job)
    logger.info(
        "training job decided",
        extra={"job": job.pk, "decision": job.decision, "reason": reason},
    )
    return job


def training_job_finished_publish(job: TrainingJob) -> None:
    """Announces a finished job (`training_job.finished`, data: its API body), whichever way it
    ended: decided, failed, or failed by the reaper when its worker died."""
    from quality.views import TrainingJobOutput  # the views import this module

    event_publish("training_job.finished", model=job.model.name, data=TrainingJobOutput(job).data)


def _fail(job_id: int, *, problem: str, message: str) -> TrainingJob:
    with transaction.atomic():
        job = _job_locked(job_id)
        if job.status in (TrainingStatus.SUCCEEDED, TrainingStatus.FAILED):
            return job  # the first end stands (the reaper's, say), announced once
        job.status = TrainingStatus.FAILED
        job.error_type = problem[:50]
        job.error = message
        job.finished_at = timezone.now()
        job.save(update_fields=["status", "error_type", "error", "finished_at"])
        training_job_finished_publish(job)
    logger.warning("training job failed", extra={"job": job_id, "problem": problem})
    return job


def training_job_run(*, job_id: int) -> TrainingJob:
    """Runs a job to its decision. Safe to call again: a finished job is left alone, and a
    candidate registered by an earlier attempt is reused, never registered twice."""
    with transaction.atomic():
        job = TrainingJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None:
            # Deleted while queued: a stale message, not an error worth retrying.
            raise NotFoundError(f"Training job {job_id} does not exist (deleted?).")
        if job.status in (TrainingStatus.SUCCEEDED, TrainingStatus.FAILED):
            return job
        if job.attempts >= settings.JOB_MAX_ATTEMPTS:
            # Every earlier start ended unfinished (its worker died mid-run, say): a job that
            # kills its worker would otherwise be redelivered and say "running" for ever.
            job.status = TrainingStatus.FAILED
            job.error_type = "worker_lost"
            job.error = (
                f"The job started {job.attempts} times without finishing: its worker stopped "
                f"during each run (out of memory?). Not started again (JOB_MAX_ATTEMPTS)."
            )
            job.finished_at = timezone.now()
            job.save(update_fields=["status", "error_type", "error", "finished_at"])
            training_job_finished_publish(job)
            logger.error("training job failed: its worker keeps dying", extra={"job": job_id})
            return job
        job.status = TrainingStatus.RUNNING
        job.attempts += 1
        job.started_at = job.started_at or timezone.now()
        # With the status, or the reaper could judge this attempt by an earlier one's heartbeat.
        job.heartbeat_at = timezone.now()
        job.save(update_fields=["status", "attempts", "started_at", "heartbeat_at"])
    try:
        with job_heartbeat(job):
            if job.candidate_version_id is None:
                job = (
                    TrainingJob.objects.select_related("model", "dataset").filter(pk=job_id).first()
                )
                if job is None:
                    raise NotFoundError(f"Training job {job_id} does not exist (deleted?).")
                trained = _train(job)
                _candidate_register(job_id, trained)
            return _decide(job_id)
    except OperationalError:
        raise  # transient (database away): the task retries
    except (datasets.DatasetError, TrainingFailed) as exc:
        return _fail(job_id, problem=exc.problem, message=exc.message)
    except DomainError as exc:
        return _fail(job_id, problem=exc.error_type, message=exc.message)
    except Exception as exc:
        # scikit-learn raises ValueError & co. for data it cannot fit: the job says so.
        logger.exception("training job crashed", extra={"job": job_id})
        return _fail(job_id, problem="training_error", message=f"{type(exc).__name__}: {exc}")
