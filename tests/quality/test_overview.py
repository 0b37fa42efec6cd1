import io
import json
import re
import struct
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from mlregistry import services
from mlregistry.models import Stage
from predictions.models import PredictionLog
from quality import drift, training
from quality.models import Dataset, DriftReport, TrainingJob, TrainingStatus
from tests import factories

pytestmark = pytest.mark.django_db

NAMES = factories.IRIS_FEATURES


@pytest.fixture
def admin_client(client, db):
    user = User.objects.create_superuser("root", "root@example.com", "pw-root-123")
    client.force_login(user)
    return client


def _rows(seed: int, n: int, shift: float = 0.0) -> list[dict]:
    rng = np.random.default_rng(seed)
    means = [5.8, 3.0, 3.7 + shift, 1.2]
    return [
        {name: float(v) for name, v in zip(NAMES, rng.normal(means, 0.5), strict=True)}
        for _ in range(n)
    ]


@pytest.fixture
def model_with_history(iris_model):
    """Three versions (one promoted, replaced, archived), feedback on served rows, drift reports."""
    v1 = factories.version_create(iris_model, c=1.0, metrics={"accuracy": 0.93})
    v2 = factories.version_create(
        iris_model, c=2.0, metrics={"accuracy": 0.96}, reference_sample=_rows(1, 200)
    )
    factories.version_create(iris_model, c=3.0, metrics={"accuracy": 0.95})
    services.model_version_transition(version=v1, stage=Stage.PRODUCTION, actor="t")
    services.model_version_transition(version=v2, stage=Stage.STAGING, actor="t")
    services.model_version_transition(version=v2, stage=Stage.PRODUCTION, actor="t")
    base = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)
    logs = []
    for day in range(3):
        for i, row in enumerate(_rows(10 + day, 60, shift=0.6 * day)):
            logs.append(
                PredictionLog(
                    request_id=f"d{day}-{i}",
                    model=iris_model,
                    version=v2 if day else v1,
                    features=row,
                    output=i % 3,
                    actual=(i % 3) if i % 5 else (i + 1) % 3,
                    created_at=base + timedelta(days=day),
                )
            )
    PredictionLog.objects.bulk_create(logs)
    for day in range(1, 4):
        drift.drift_check(as_of=base + timedelta(days=day))
    return iris_model


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_overview_renders_every_chart_with_alt_text_for_a_model_with_history(
    admin_client, model_with_history
):
    url = reverse("admin:mlregistry_registeredmodel_overview", args=[model_with_history.pk])
    assert url == f"/admin/mlregistry/registeredmodel/{model_with_history.pk}/overview/"

    page = admin_client.get(url)

    assert page.status_code == 200
    html = page.content.decode()
    images = re.findall(r'<img src="([^"]+)" alt="([^"]+)"', html)
    assert [src.rsplit("/", 1)[1] for src, _ in images] == [
        "timeline.png",
        "metrics.png",
        "online-accuracy.png",
        "drift.png",
    ]
    assert all(alt.startswith("iris: ") and len(alt) > 30 for _, alt in images)
    assert "http://" not in html.replace('xmlns="http://', "") and "https://" not in html
    for src, _ in images:
        image = admin_client.get(src)
        assert image.status_code == 200
        assert image["Content-Type"] == "image/png"
        width, height = _png_size(image.content)
        assert (width, height) == (800, 320)
    assert "no reference" in html  # v1 and v3 have none
    assert "200 rows" in html
    assert "Run drift check now" in html


def test_chart_data_follows_the_history(model_with_history):
    from quality import overview

    segments = overview.stage_segments(model=model_with_history)
    assert [(v, s) for v, s, _, _ in segments] == [
        (1, "none"),
        (1, "production"),
        (1, "archived"),
        (2, "none"),
        (2, "staging"),
        (2, "production"),
        (3, "none"),
    ]
    assert overview.version_metrics(model=model_with_history) == {
        "accuracy": [(1, 0.93), (2, 0.96), (3, 0.95)]
    }
    quality = overview.online_quality(model=model_with_history)
    assert sorted(quality) == [1, 2]
    assert [round(p[1], 2) for p in quality[2]] == [0.8, 0.8]
    series, threshold = overview.drift_series(model=model_with_history)
    assert threshold == 0.05
    assert len(series["petal_length"]) == 2  # the first window saw only v1 traffic


def test_overview_of_a_new_model_still_draws_its_charts(admin_client, iris_model):
    url = reverse("admin:mlregistry_registeredmodel_overview", args=[iris_model.pk])
    assert "No versions yet" in admin_client.get(url).content.decode()
    for chart in ("timeline", "metrics", "online-accuracy", "drift"):
        image = admin_client.get(
            reverse("admin:mlregistry_registeredmodel_overview_chart", args=[iris_model.pk, chart])
        )
        assert _png_size(image.content)[0] > 0


def test_regression_online_quality_is_mean_absolute_error(db):
    from quality import overview

    model = factories.registered_model_create("reg", task="regression")
    version = services.model_version_create(
        model=model, artifact=io.BytesIO(factories.diabetes_regressor_bytes()), actor="t"
    )
    at = datetime(2026, 11, 18, tzinfo=UTC)
    PredictionLog.objects.bulk_create(
        PredictionLog(
            request_id=str(i), model=model, version=version, output=o, actual=a, created_at=at
        )
        for i, (o, a) in enumerate([(10.0, 12.0), (5.0, 4.0), ("x", 1.0)])
    )
    assert overview.online_quality(model=model) == {1: [(at, 1.5, 2)]}
    assert overview.chart_png(model=model, chart="online-accuracy")[:4] == b"\x89PNG"


def test_unknown_chart_or_model_is_404_and_anonymous_users_go_to_login(
    admin_client, client, iris_model
):
    base = f"/admin/mlregistry/registeredmodel/{iris_model.pk}/overview/"
    assert admin_client.get(base + "nope.png").status_code == 404
    assert admin_client.get("/admin/mlregistry/registeredmodel/999/overview/").status_code == 404
    client.logout()
    assert client.get(base).status_code == 302


def test_staff_without_view_permission_cannot_open_the_overview(client, iris_model):
    client.force_login(factories.user_create("clerk", staff=True))
    url = reverse("admin:mlregistry_registeredmodel_overview", args=[iris_model.pk])
    assert client.get(url).status_code == 403


def test_change_page_links_to_the_overview(admin_client, iris_model):
    page = admin_client.get(
        reverse("admin:mlregistry_registeredmodel_change", args=[iris_model.pk])
    )
    assert f"/admin/mlregistry/registeredmodel/{iris_model.pk}/overview/" in page.content.decode()


def test_drift_check_runs_from_the_overview(admin_client, iris_model):
    version = factories.version_create(iris_model, reference_sample=_rows(1, 100))
    services.model_version_transition(version=version, stage=Stage.PRODUCTION, actor="t")
    url = reverse("admin:mlregistry_registeredmodel_overview", args=[iris_model.pk])

    response = admin_client.post(url, {"action": "drift_check"}, follow=True)

    assert response.status_code == 200
    assert "Drift checked: v1: insufficient_data." in response.content.decode()
    assert DriftReport.objects.filter(version=version).count() == 1


def test_reference_sample_is_attached_from_the_overview(admin_client, iris_model):
    version = factories.version_create(iris_model)
    url = reverse("admin:mlregistry_registeredmodel_overview", args=[iris_model.pk])
    bad = admin_client.post(
        url,
        {"action": "attach_reference", "version": version.pk, "reference_sample": '[{"x": 1}]'},
    )
    assert "missing features" in bad.content.decode()

    admin_client.post(
        url,
        {
            "action": "attach_reference",
            "version": version.pk,
            "reference_sample": json.dumps(_rows(2, 30)),
        },
    )

    version.refresh_from_db()
    assert len(version.reference_sample) == 30
    assert set(version.reference_stats) == set(NAMES)
    assert version.metadata["reference_attached_by"] == "root"


def test_training_job_admin_starts_a_job_and_shows_cv_and_comparison(
    admin_client, iris_model, django_capture_on_commit_callbacks
):
    dataset = factories.iris_dataset_create("iris-data", actor="t")
    champion = factories.version_create(iris_model, c=0.01)
    services.model_version_transition(version=champion, stage=Stage.PRODUCTION, actor="t")
    assert admin_client.get("/admin/quality/trainingjob/add/").status_code == 200
    refused = admin_client.post(
        "/admin/quality/trainingjob/add/",
        {
            "model": iris_model.pk,
            "dataset": dataset.pk,
            "estimator": "LogisticRegression",
            "estimator_params": '{"C": -1}',
            "policy": "auto_promote",
            "margin": "0",
            "cv_folds": "5",
            "holdout_fraction": "0.2",
            "random_state": "0",
        },
    )
    assert "must be at least 1e-06" in refused.content.decode()

    with django_capture_on_commit_callbacks() as callbacks:
        created = admin_client.post(
            "/admin/quality/trainingjob/add/",
            {
                "model": iris_model.pk,
                "dataset": dataset.pk,
                "estimator": "LogisticRegression",
                "estimator_params": '{"C": 1.0, "max_iter": 500}',
                "policy": "auto_promote",
                "margin": "0.01",
                "cv_folds": "5",
                "holdout_fraction": "0.2",
                "random_state": "0",
            },
        )
    assert created.status_code == 302
    assert len(callbacks) == 1
    job = training.training_job_run(job_id=TrainingJob.objects.get().pk)
    assert job.status == TrainingStatus.SUCCEEDED

    page = admin_client.get(reverse("admin:quality_trainingjob_change", args=[job.pk]))

    html = page.content.decode()
    assert page.status_code == 200
    assert "fold 5" in html and "mean ± std" in html
    assert f"v{job.candidate_version.version}" in html
    assert f"{job.champion_score:.4f}" in html
    assert job.details["decision_reason"].split(" (")[0] in html
    [src] = re.findall(r'<img src="([^"]+)" alt="Training job #', html)
    assert _png_size(admin_client.get(src).content) == (700, 280)
    assert admin_client.get("/admin/quality/trainingjob/999/scores.png").status_code == 404
    overview_page = admin_client.get(
        reverse("admin:mlregistry_registeredmodel_overview", args=[iris_model.pk])
    ).content.decode()
    assert f"#{job.pk}" in overview_page


def test_run_again_sends_only_unfinished_jobs(
    admin_client, iris_model, django_capture_on_commit_callbacks
):
    dataset = factories.iris_dataset_create("d", actor="t")
    queued = training.training_job_create(
        model=iris_model, dataset=dataset, actor="t", enqueue=False
    )
    done = training.training_job_run(
        job_id=training.training_job_create(
            model=iris_model, dataset=dataset, actor="t", enqueue=False
        ).pk
    )
    with django_capture_on_commit_callbacks() as callbacks:
        response = admin_client.post(
            "/admin/quality/trainingjob/",
            {"action": "run_again", "_selected_action": [queued.pk, done.pk]},
            follow=True,
        )
    assert len(callbacks) == 1
    assert "already failed" in response.content.decode()
    queued_page = admin_client.get(reverse("admin:quality_trainingjob_change", args=[queued.pk]))
    assert "No scores yet" not in queued_page.content.decode()
    from quality import overview

    assert _png_size(overview.training_job_png(job=queued))[0] == 700


def test_dataset_admin_creates_from_an_upload_and_reports_problems(admin_client):
    x, y = factories.iris_frame()
    csv = x.assign(species=y).to_csv(index=False).encode()
    form = {
        "name": "iris-data",
        "target_column": "species",
        "feature_columns": ", ".join(NAMES),
        "missing_policy": "drop",
    }
    bad = admin_client.post(
        "/admin/quality/dataset/add/",
        {
            **form,
            "feature_columns": "sepal_length, colour",
            "file": SimpleUploadedFile("a.csv", csv),
        },
    )
    assert "lacks the column(s) &#x27;colour&#x27;" in bad.content.decode()

    created = admin_client.post(
        "/admin/quality/dataset/add/", {**form, "file": SimpleUploadedFile("a.csv", csv)}
    )

    assert created.status_code == 302
    dataset = Dataset.objects.get()
    assert dataset.feature_columns == NAMES
    assert admin_client.get(created["Location"]).status_code == 200
    assert admin_client.get("/admin/quality/dataset/add/").status_code == 200


def test_drift_reports_are_listed_read_only_in_the_admin(admin_client, model_with_history):
    page = admin_client.get("/admin/quality/driftreport/")
    assert page.status_code == 200
    assert "petal_length" in page.content.decode()
    report = DriftReport.objects.first()
    assert admin_client.get(f"/admin/quality/driftreport/{report.pk}/change/").status_code == 200
    assert admin_client.get("/admin/quality/driftreport/add/").status_code == 403
