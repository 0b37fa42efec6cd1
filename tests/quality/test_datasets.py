import io

import pandas as pd
import pytest
from django.db import connection

from config.errors import ConflictError, ValidationFailed
from quality import datasets, training
from quality.models import Dataset, DatasetSource, TrainingStatus
from tests import factories

pytestmark = [pytest.mark.django_db, pytest.mark.storage]

NAMES = factories.IRIS_FEATURES


def iris_table() -> pd.DataFrame:
    x, y = factories.iris_frame()
    return x.assign(species=y)


def csv_dataset(frame: pd.DataFrame, name: str = "data", **kwargs) -> Dataset:
    return training.dataset_create(
        name=name,
        actor="tests",
        target_column="species",
        feature_columns=NAMES,
        file=io.BytesIO(frame.to_csv(index=False).encode()),
        **kwargs,
    )


@pytest.fixture
def iris_sql_table(settings):
    """A real table in the test database, readable through the dataset connection 'warehouse'."""
    settings.DATASET_DATABASES = {"warehouse": "default"}
    columns = ", ".join(f"{n} double precision" for n in NAMES)
    rows = iris_table().itertuples(index=False)
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE iris_rows ({columns}, species integer)")
        cursor.executemany(
            "INSERT INTO iris_rows VALUES (%s, %s, %s, %s, %s)",
            [(*(float(v) for v in row[:4]), int(row[4])) for row in rows],
        )
    return "iris_rows"


def sql_dataset(query: str, name: str = "sql-data", **kwargs) -> Dataset:
    return training.dataset_create(
        name=name,
        actor="tests",
        target_column="species",
        feature_columns=NAMES,
        sql_connection="warehouse",
        sql_query=query,
        **kwargs,
    )


def failed_job(dataset: Dataset, **kwargs):
    model = factories.registered_model_create("iris")
    job = training.training_job_create(
        model=model,
        dataset=dataset,
        actor="tests",
        estimator="LogisticRegression",
        enqueue=False,
        **kwargs,
    )
    job = training.training_job_run(job_id=job.pk)
    assert job.status == TrainingStatus.FAILED
    return job


def test_sql_dataset_reads_a_real_table(iris_sql_table):
    dataset = sql_dataset("SELECT * FROM iris_rows WHERE sepal_length > 0;")

    loaded = datasets.dataset_load(dataset)

    assert dataset.source == DatasetSource.SQL
    assert dataset.sql_query == "SELECT * FROM iris_rows WHERE sepal_length > 0"
    assert list(loaded.features.columns) == NAMES
    assert len(loaded.features) == 150
    assert sorted(loaded.target.unique().tolist()) == [0, 1, 2]
    assert loaded.notes == {"rows_read": 150, "rows_used": 150}


def test_sql_dataset_trains_a_candidate(iris_sql_table):
    dataset = sql_dataset("WITH t AS (SELECT * FROM iris_rows) SELECT * FROM t")
    model = factories.registered_model_create("iris")
    job = training.training_job_create(
        model=model, dataset=dataset, actor="t", estimator="LogisticRegression", enqueue=False
    )
    job = training.training_job_run(job_id=job.pk)
    assert job.status == TrainingStatus.SUCCEEDED
    assert job.candidate_score > 0.9


def test_sql_reads_leave_no_trace_and_sqlite_is_query_only_during_them(iris_sql_table):
    datasets.dataset_load(sql_dataset("SELECT * FROM iris_rows"))
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO iris_rows VALUES (1, 1, 1, 1, 1)")  # writable again after
        cursor.execute("SELECT COUNT(*) FROM iris_rows")
        assert cursor.fetchone()[0] == 151


@pytest.mark.postgres
def test_a_write_hidden_in_a_select_is_refused_by_the_read_only_transaction(iris_sql_table):
    dataset = sql_dataset("WITH d AS (DELETE FROM iris_rows RETURNING *) SELECT * FROM d")

    job = failed_job(dataset)

    assert job.error_type == "sql_error"
    assert "read-only transaction" in job.error
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM iris_rows")
        assert cursor.fetchone()[0] == 150


@pytest.mark.parametrize(
    "query",
    [
        "DELETE FROM iris_rows",
        "SELECT 1; DROP TABLE iris_rows",
        "WITH a AS (SELECT 1) DELETE FROM iris_rows",
        " ; ",
    ],
)
def test_only_one_select_statement_is_accepted(iris_sql_table, query):
    with pytest.raises(ValidationFailed) as refused:
        sql_dataset(query)
    assert refused.value.problem == "sql_not_allowed"


def test_unknown_sql_connection_is_refused(iris_sql_table):
    with pytest.raises(ValidationFailed, match="Unknown dataset connection 'nope'"):
        training.dataset_create(
            name="x",
            actor="t",
            target_column="species",
            feature_columns=NAMES,
            sql_connection="nope",
            sql_query="SELECT 1",
        )


def test_sql_datasets_are_off_until_a_connection_is_configured(db, settings):
    settings.DATASET_DATABASES = {}
    with pytest.raises(ValidationFailed, match="none configured"):
        datasets.sql_connection_alias("default")


@pytest.mark.parametrize(
    ("query", "problem", "says"),
    [
        ("SELECT sepal_length, sepal_width, species FROM iris_rows", "missing_columns", "petal"),
        ("SELECT * FROM iris_rows WHERE 1 = 0", "empty", "no rows"),
        ("SELECT * FROM no_such_table", "sql_error", "no_such_table"),
        ("SELECT * FROM iris_rows WHERE species = 1", "target_classes", "at least two"),
    ],
)
def test_bad_sql_datasets_fail_the_job_with_the_named_problem(iris_sql_table, query, problem, says):
    job = failed_job(sql_dataset(query))
    assert job.error_type == problem
    assert says in job.error


def test_non_numeric_feature_values_fail_the_job_naming_column_and_row(db):
    frame = iris_table().astype({"sepal_width": object})
    frame.loc[3, "sepal_width"] = "abc"

    job = failed_job(csv_dataset(frame))

    assert job.error_type == "non_numeric"
    assert job.error == "Column 'sepal_width' must hold numbers but row 3 holds 'abc'."


def test_infinite_feature_values_are_not_numbers(db):
    frame = iris_table()
    frame.loc[4, "petal_length"] = float("inf")
    job = failed_job(csv_dataset(frame))
    assert job.error_type == "non_numeric"
    assert "row 4 holds inf" in job.error


def test_a_continuous_target_is_not_a_class_label(db):
    frame = iris_table()
    frame["species"] = frame["sepal_length"] * 1.37
    job = failed_job(csv_dataset(frame))
    assert job.error_type == "target_classes"
    assert "and " in job.error and "really a class label" in job.error
    assert len(job.error) < 400


def test_rare_target_classes_fail_the_job(db):
    frame = iris_table()
    frame.loc[:2, "species"] = 7  # three rows of a fourth class, fewer than 5 folds
    job = failed_job(csv_dataset(frame))
    assert job.error_type == "target_classes"
    assert "7 (3)" in job.error


def test_too_few_rows_fail_the_job(db):
    frame = iris_table().groupby("species").head(3)
    job = failed_job(csv_dataset(frame), cv_folds=2)
    assert job.error_type == "too_few_rows"


def test_missing_values_policy_error_fails_the_job(db):
    frame = iris_table()
    frame.loc[[5, 6], "petal_width"] = None
    job = failed_job(csv_dataset(frame, missing_policy="error"))
    assert job.error_type == "missing_values"
    assert "petal_width: 2" in job.error


def test_missing_values_are_dropped_or_imputed_by_policy(db):
    frame = iris_table()
    frame.loc[[5, 6], "petal_width"] = None
    frame.loc[7, "species"] = None

    dropped = datasets.dataset_load(csv_dataset(frame, name="d", missing_policy="drop"))
    imputed = datasets.dataset_load(csv_dataset(frame, name="m", missing_policy="impute_median"))
    mean = datasets.dataset_load(csv_dataset(frame, name="a", missing_policy="impute_mean"))

    assert dropped.notes["rows_dropped"] == 2
    assert dropped.notes["rows_without_target"] == 1
    assert len(dropped.features) == 147
    assert len(imputed.features) == 149
    assert imputed.notes["imputed"] == {"petal_width": 1.3}
    assert not mean.features.isna().any().any()
    assert mean.notes["missing_values"] == {"petal_width": 2}


def test_regression_target_must_be_numeric(db):
    frame = iris_table().assign(species="setosa")
    model = factories.registered_model_create("reg", task="regression")
    job = training.training_job_create(
        model=model, dataset=csv_dataset(frame), actor="t", estimator="Ridge", enqueue=False
    )
    job = training.training_job_run(job_id=job.pk)
    assert (job.status, job.error_type) == (TrainingStatus.FAILED, "non_numeric")


def test_parquet_upload_is_read_like_csv(db):
    buffer = io.BytesIO()
    iris_table().to_parquet(buffer)
    buffer.seek(0)
    buffer.name = "iris.parquet"

    dataset = training.dataset_create(
        name="pq", actor="t", target_column="species", feature_columns=NAMES, file=buffer
    )

    assert dataset.file_format == "parquet"
    assert dataset.file.name == f"datasets/{dataset.file_sha256[:2]}/{dataset.file_sha256}.parquet"
    assert len(datasets.dataset_load(dataset).features) == 150


def test_file_checks_at_creation(db):
    with pytest.raises(ValidationFailed) as missing:
        csv_dataset(iris_table().drop(columns=["petal_width"]))
    assert missing.value.problem == "missing_columns"
    with pytest.raises(ValidationFailed) as unreadable:
        training.dataset_create(
            name="bad",
            actor="t",
            target_column="species",
            feature_columns=NAMES,
            file=io.BytesIO(b"not parquet"),
            file_format="parquet",
        )
    assert unreadable.value.problem == "file_unreadable"
    with pytest.raises(ValidationFailed) as empty:
        csv_dataset(pd.DataFrame(), name="empty")
    assert empty.value.problem == "empty"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"feature_columns": []}, "feature_columns"),
        ({"feature_columns": ["a", "a"]}, "feature_columns"),
        ({"feature_columns": ["species"]}, "feature_columns"),
        ({"target_column": ""}, "target_column"),
        ({"missing_policy": "guess"}, "missing_policy"),
        ({"file_format": "xlsx"}, "file_format"),
        ({"sql_query": "SELECT 1"}, "file"),
    ],
)
def test_dataset_definitions_are_checked(db, kwargs, field):
    values = {
        "name": "d",
        "actor": "t",
        "target_column": "species",
        "feature_columns": NAMES,
        "file": io.BytesIO(iris_table().to_csv(index=False).encode()),
        **kwargs,
    }
    with pytest.raises(ValidationFailed) as refused:
        training.dataset_create(**values)
    assert field in refused.value.fields


def test_dataset_names_are_unique(db):
    csv_dataset(iris_table())
    with pytest.raises(ConflictError):
        csv_dataset(iris_table())


def test_a_tampered_file_fails_the_job(db):
    dataset = csv_dataset(iris_table())
    Dataset.objects.filter(pk=dataset.pk).update(file_sha256="0" * 64)
    job = failed_job(Dataset.objects.get(pk=dataset.pk))
    assert job.error_type == "file_integrity"


def test_a_lost_file_fails_the_job(db):
    dataset = csv_dataset(iris_table())
    Dataset.objects.filter(pk=dataset.pk).update(file="datasets/gone.csv")
    job = failed_job(Dataset.objects.get(pk=dataset.pk))
    assert job.error_type == "file_missing"


def test_row_limit_applies_to_files(db, settings):
    settings.DATASET_MAX_ROWS = 100
    assert failed_job(csv_dataset(iris_table())).error_type == "too_many_rows"


def test_row_limit_applies_to_queries(iris_sql_table, settings):
    settings.DATASET_MAX_ROWS = 100
    with pytest.raises(ValidationFailed) as refused:
        datasets.dataset_load(sql_dataset("SELECT * FROM iris_rows"))
    assert refused.value.problem == "too_many_rows"
