"""API of the model-quality loop: datasets and training jobs (parse, call a service, render)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from config.errors import NotFoundError
from config.fields import AsciiFloatField, AsciiIntegerField, KnownFieldsMixin
from config.parsers import MultiPartParser
from config.schema import error_responses
from mlregistry import selectors
from mlregistry.permissions import RegistryPermission
from mlregistry.serializers import JSONStringField
from quality import training
from quality.estimators import ESTIMATORS
from quality.models import (
    RANDOM_STATE_MAX,
    Dataset,
    FileFormat,
    MissingPolicy,
    TrainingJob,
    TrainingPolicy,
)


class DatasetInput(serializers.Serializer):
    name = serializers.SlugField(max_length=100)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    target_column = serializers.CharField(max_length=200)
    feature_columns = JSONStringField()
    missing_policy = serializers.ChoiceField(
        choices=MissingPolicy.choices, default=MissingPolicy.DROP
    )
    file = serializers.FileField(required=False, allow_empty_file=False, use_url=False)
    file_format = serializers.ChoiceField(choices=FileFormat.choices, required=False)
    sql_connection = serializers.CharField(required=False, allow_blank=True, default="")
    sql_query = serializers.CharField(required=False, allow_blank=True, default="")


class DatasetOutput(serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Dataset
        fields = [
            "id",
            "name",
            "description",
            "source",
            "file_format",
            "file_sha256",
            "sql_connection",
            "sql_query",
            "target_column",
            "feature_columns",
            "missing_policy",
            "created_by",
            "created_at",
        ]


class DatasetListView(GenericAPIView):
    permission_classes = [RegistryPermission]
    write_permissions = {"POST": "quality.add_dataset"}
    serializer_class = DatasetOutput
    # One media type per operation: a generated client cannot pick between several bodies.
    parser_classes = [MultiPartParser]
    # The block digests are for batch jobs' chunks; a page of datasets need not read them.
    queryset = (
        Dataset.objects.select_related("created_by").defer("file_block_sha256").order_by("name")
    )

    @extend_schema(
        operation_id="list_datasets",
        tags=["datasets"],
        responses=DatasetOutput(many=True),
        summary="List datasets",
    )
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(DatasetOutput(page, many=True).data)

    @extend_schema(
        operation_id="create_dataset",
        tags=["datasets"],
        request={"multipart/form-data": DatasetInput},
        responses={201: DatasetOutput, **error_responses(409)},
        summary="Create a dataset: an uploaded CSV/Parquet file, or an SQL query",
    )
    def post(self, request: Request) -> Response:
        data = DatasetInput(data=request.data)
        data.is_valid(raise_exception=True)
        dataset = training.dataset_create(actor=request.user, **data.validated_data)
        return Response(DatasetOutput(dataset).data, status=status.HTTP_201_CREATED)


class TrainingJobInput(KnownFieldsMixin, serializers.Serializer):
    dataset = serializers.SlugRelatedField(slug_field="name", queryset=Dataset.objects.all())
    estimator = serializers.ChoiceField(
        choices=sorted(ESTIMATORS), required=False, allow_blank=True, default=""
    )
    estimator_params = serializers.JSONField(required=False, default=dict)
    policy = serializers.ChoiceField(
        choices=TrainingPolicy.choices, default=TrainingPolicy.STAGE_ONLY
    )
    metric = serializers.CharField(required=False, allow_blank=True, default="")
    margin = AsciiFloatField(required=False, default=0.0, min_value=0.0)
    cv_folds = AsciiIntegerField(required=False, default=5, min_value=2, max_value=20)
    holdout_fraction = AsciiFloatField(required=False, default=0.2, min_value=0.05, max_value=0.5)
    random_state = AsciiIntegerField(
        required=False, default=0, min_value=0, max_value=RANDOM_STATE_MAX
    )
    recurring = serializers.BooleanField(required=False, default=False)


class TrainingJobOutput(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name")
    dataset = serializers.CharField(source="dataset.name")
    champion_version = AsciiIntegerField(
        source="champion_version.version", allow_null=True, default=None
    )
    candidate_version = AsciiIntegerField(
        source="candidate_version.version", allow_null=True, default=None
    )

    class Meta:
        model = TrainingJob
        fields = [
            "id",
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
            "status",
            "decision",
            "error_type",
            "error",
            "cv_scores",
            "candidate_score",
            "champion_score",
            "champion_version",
            "candidate_version",
            "details",
            "attempts",
            "created_at",
            "started_at",
            "finished_at",
        ]


def _jobs(model_name: str):
    return TrainingJob.objects.filter(model__name=model_name).select_related(
        "model", "dataset", "champion_version", "candidate_version"
    )


class TrainingJobListView(GenericAPIView):
    permission_classes = [RegistryPermission]
    write_permissions = {"POST": "quality.add_trainingjob"}
    serializer_class = TrainingJobOutput

    @extend_schema(
        operation_id="list_training_jobs",
        tags=["training"],
        responses=TrainingJobOutput(many=True),
        summary="List a model's training jobs",
    )
    def get(self, request: Request, name: str) -> Response:
        selectors.registered_model_get(name=name)
        page = self.paginate_queryset(_jobs(name).order_by("-created_at", "-id"))
        return self.get_paginated_response(TrainingJobOutput(page, many=True).data)

    @extend_schema(
        operation_id="create_training_job",
        tags=["training"],
        request=TrainingJobInput,
        responses={202: TrainingJobOutput},
        summary="Start a training job (a worker runs it; poll the job for its decision)",
    )
    def post(self, request: Request, name: str) -> Response:
        model = selectors.registered_model_get(name=name)
        data = TrainingJobInput(data=request.data)
        data.is_valid(raise_exception=True)
        job = training.training_job_create(model=model, actor=request.user, **data.validated_data)
        return Response(TrainingJobOutput(job).data, status=status.HTTP_202_ACCEPTED)


class TrainingJobDetailView(GenericAPIView):
    permission_classes = [RegistryPermission]
    serializer_class = TrainingJobOutput

    @extend_schema(
        operation_id="get_training_job",
        tags=["training"],
        summary="Get one training job with its scores and decision",
    )
    def get(self, request: Request, name: str, job_id: int) -> Response:
        job = _jobs(name).filter(pk=job_id).first()
        if job is None:
            raise NotFoundError(f"Model {name!r} has no training job {job_id}.")
        return Response(TrainingJobOutput(job).data)
