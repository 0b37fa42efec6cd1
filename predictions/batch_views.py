"""API of batch scoring jobs under /api/v1/models/{name}/batch-jobs (parse, call a service,
render); the work is predictions.batch's."""

from __future__ import annotations

from django.conf import settings
from django.http import FileResponse, HttpResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.exceptions import NotAcceptable
from rest_framework.generics import GenericAPIView
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from config.errors import NotFoundError, PayloadTooLarge
from config.fields import AsciiFloatField, AsciiIntegerField
from config.parsers import MultiPartParser
from config.renderers import BinaryRenderer, CSVRenderer, JSONErrorsMixin
from config.schema import error_responses
from mlregistry.permissions import RegistryPermission
from mlregistry.selectors import registered_model_get
from predictions import batch
from predictions.models import BatchFormat, BatchJob


class BatchJobInput(serializers.Serializer):
    file = serializers.FileField(
        required=False,
        allow_empty_file=False,
        use_url=False,
        help_text="the rows to score: a CSV file with a header row, or a Parquet file (give "
        "this or `dataset`)",
    )
    dataset = AsciiIntegerField(
        required=False, min_value=1, help_text="id of a file dataset to score (or `file`)"
    )
    version = AsciiIntegerField(
        required=False, min_value=1, help_text="version number (default: production)"
    )
    alias = serializers.CharField(
        required=False, allow_blank=True, default="", max_length=100, help_text="or an alias"
    )
    output_format = serializers.ChoiceField(
        choices=BatchFormat.choices, default=BatchFormat.PARQUET
    )
    chunk_rows = AsciiIntegerField(
        required=False,
        help_text="rows per chunk task, 1 to BATCH_CHUNK_ROWS_MAX (default BATCH_CHUNK_ROWS, "
        "50000)",
    )
    max_error_share = AsciiFloatField(
        required=False,
        help_text="share of invalid rows (0 to 1) past which the job fails (default "
        "BATCH_MAX_ERROR_SHARE)",
    )


class BatchLinksOutput(serializers.Serializer):
    output = serializers.CharField(allow_null=True, help_text="the scored rows, once succeeded")
    errors = serializers.CharField(
        allow_null=True, help_text="CSV of invalid rows: row, field, reason"
    )


class BatchJobOutput(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name")
    version = AsciiIntegerField(source="version_number")
    rows_per_second = serializers.SerializerMethodField()
    links = serializers.SerializerMethodField()

    class Meta:
        model = BatchJob
        fields = [
            "id",
            "model",
            "version",
            "alias",
            "input_label",
            "input_format",
            "input_sha256",
            "dataset_id",
            "output_format",
            "chunk_rows",
            "max_error_share",
            "status",
            "error_type",
            "error",
            "rows_total",
            "rows_done",
            "rows_failed",
            "rows_per_second",
            "chunks_total",
            "chunks_done",
            "attempts",
            "links",
            "created_at",
            "started_at",
            "finished_at",
        ]

    @extend_schema_field(serializers.FloatField(allow_null=True))
    def get_rows_per_second(self, job: BatchJob) -> float | None:
        return batch.rows_per_second(job)

    @extend_schema_field(BatchLinksOutput)
    def get_links(self, job: BatchJob) -> dict[str, str | None]:
        request = self.context.get("request")
        links: dict[str, str | None] = {"output": None, "errors": None}
        for what, name in (("output", job.output_name), ("errors", job.errors_name)):
            if not name:
                continue
            url = batch.batch_file_url(name, filename=_download_name(job, what, name))
            if url is None:
                path = reverse(
                    f"batch-job-{what}", kwargs={"name": job.model.name, "job_id": job.pk}
                )
                url = request.build_absolute_uri(path) if request is not None else path
            links[what] = url
        return links


def _jobs(name: str):
    # The input's block digests are for the chunks; a page of jobs need not read them.
    return (
        BatchJob.objects.filter(model__name=name)
        .select_related("model")
        .defer("parquet_block_sha256")
    )


def _job(name: str, job_id: int) -> BatchJob:
    job = _jobs(name).filter(pk=job_id).first()
    if job is None:
        raise NotFoundError(f"Model {name!r} has no batch job {job_id}.")
    return job


class BatchJobListView(GenericAPIView):
    permission_classes = [RegistryPermission]
    write_permissions = {"POST": "predictions.add_batchjob"}
    serializer_class = BatchJobOutput
    # One media type per operation: a generated client cannot pick between several bodies.
    parser_classes = [MultiPartParser]

    @extend_schema(
        operation_id="list_batch_jobs",
        tags=["batch"],
        responses=BatchJobOutput(many=True),
        summary="List a model's batch scoring jobs, newest first",
    )
    def get(self, request: Request, name: str) -> Response:
        registered_model_get(name=name)
        page = self.paginate_queryset(_jobs(name).order_by("-created_at", "-id"))
        return self.get_paginated_response(
            BatchJobOutput(page, many=True, context={"request": request}).data
        )

    @extend_schema(
        operation_id="create_batch_job",
        tags=["batch"],
        request={"multipart/form-data": BatchJobInput},
        responses={202: BatchJobOutput, **error_responses(413)},
        summary="Score a CSV/Parquet file (an upload or a dataset) in chunks across workers; "
        "poll the job for progress and download links",
    )
    def post(self, request: Request, name: str) -> Response:
        # Refuse an oversize body before it is parsed: Django spools a multipart file to disk
        # whole, and the file's own size check would come only after that.
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
        limit = settings.BATCH_MAX_INPUT_SIZE
        if declared > limit + 1024 * 1024:
            raise PayloadTooLarge(
                f"The upload is larger than the limit of {limit} bytes (BATCH_MAX_INPUT_SIZE).",
                fields={"file": [f"larger than {limit} bytes"]},
            )
        model = registered_model_get(name=name)
        data = BatchJobInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        job = batch.batch_job_create(
            model=model,
            actor=request.user,
            upload=values.get("file"),
            dataset=values.get("dataset"),
            version=values.get("version"),
            alias=values.get("alias", ""),
            output_format=values["output_format"],
            chunk_rows=values.get("chunk_rows"),
            max_error_share=values.get("max_error_share"),
        )
        body = BatchJobOutput(job, context={"request": request}).data
        return Response(body, status=status.HTTP_202_ACCEPTED)


class BatchJobDetailView(GenericAPIView):
    permission_classes = [RegistryPermission]
    serializer_class = BatchJobOutput

    @extend_schema(
        operation_id="get_batch_job",
        tags=["batch"],
        responses=BatchJobOutput,
        summary="A batch job: state, rows done of total, rows per second, errors, links",
    )
    def get(self, request: Request, name: str, job_id: int) -> Response:
        job = _job(name, job_id)
        return Response(BatchJobOutput(job, context={"request": request}).data)


class BatchJobCancelView(GenericAPIView):
    permission_classes = [RegistryPermission]
    write_permissions = {"POST": "predictions.cancel_batchjob"}
    serializer_class = BatchJobOutput

    @extend_schema(
        operation_id="cancel_batch_job",
        tags=["batch"],
        request=None,
        responses={200: BatchJobOutput, **error_responses(409)},
        summary="Cancel a queued or running batch job (409 once it finished)",
    )
    def post(self, request: Request, name: str, job_id: int) -> Response:
        job = batch.batch_job_cancel(job=_job(name, job_id), actor=request.user)
        return Response(BatchJobOutput(job, context={"request": request}).data)


class BatchJobResumeView(GenericAPIView):
    permission_classes = [RegistryPermission]
    write_permissions = {"POST": "predictions.cancel_batchjob"}
    serializer_class = BatchJobOutput

    @extend_schema(
        operation_id="resume_batch_job",
        tags=["batch"],
        request=None,
        responses={202: BatchJobOutput, **error_responses(409)},
        summary="Run the unfinished chunks of a job whose workers stopped (409 otherwise)",
    )
    def post(self, request: Request, name: str, job_id: int) -> Response:
        job = batch.batch_job_resume(job=_job(name, job_id), actor=request.user)
        body = BatchJobOutput(job, context={"request": request}).data
        return Response(body, status=status.HTTP_202_ACCEPTED)


def _download_name(job: BatchJob, what: str, stored: str) -> str:
    """The file name a download of a job's output or errors file is saved under, whether the
    API streams it or the object store serves it from a presigned link."""
    return f"{job.model.name}-batch-{job.pk}-{what}.{stored.rsplit('.', 1)[-1]}"


def _file_response(request: Request, name: str, job_id: int, what: str) -> HttpResponse:
    """The file streamed as `text/csv` (a CSV) or `application/octet-stream` (Parquet); 406
    when the request accepts only the other one."""
    job = _job(name, job_id)
    stored = job.output_name if what == "output" else job.errors_name
    if not stored:
        raise NotFoundError(f"Batch job {job_id} has no {what} file (it is {job.status}).")
    is_csv = stored.endswith(".csv")
    content_type = "text/csv; charset=utf-8" if is_csv else "application/octet-stream"
    if isinstance(request.accepted_renderer, CSVRenderer) and not is_csv:
        raise NotAcceptable(
            f"The {what} file of batch job {job_id} is Parquet: accept application/octet-stream."
        )
    try:
        handle = batch.get_artifact_storage().open(stored, "rb")
    except FileNotFoundError:
        raise NotFoundError(f"The {what} file of batch job {job_id} is gone.") from None
    return FileResponse(
        handle,
        as_attachment=True,
        filename=_download_name(job, what, stored),
        content_type=content_type,
    )


# Accept: application/octet-stream or text/csv (what the schema documents) as well as JSON,
# which errors are rendered in.
_DOWNLOAD_RENDERERS = [JSONRenderer, BinaryRenderer, CSVRenderer]


class BatchJobOutputFileView(JSONErrorsMixin, GenericAPIView):
    permission_classes = [RegistryPermission]
    renderer_classes = _DOWNLOAD_RENDERERS

    @extend_schema(
        operation_id="download_batch_job_output",
        tags=["batch"],
        responses={
            (200, "application/octet-stream"): OpenApiResponse(
                OpenApiTypes.BINARY,
                description="the scored rows of a Parquet output: row, prediction, confidence, "
                "probability_<class> per class, version",
            ),
            (200, "text/csv"): OpenApiResponse(
                OpenApiTypes.BINARY, description="the same columns, of a CSV output"
            ),
            **error_responses(406),
        },
        summary="Download a succeeded job's output (streamed)",
    )
    def get(self, request: Request, name: str, job_id: int) -> HttpResponse:
        return _file_response(request, name, job_id, "output")


class BatchJobErrorsFileView(JSONErrorsMixin, GenericAPIView):
    permission_classes = [RegistryPermission]
    renderer_classes = _DOWNLOAD_RENDERERS

    @extend_schema(
        operation_id="download_batch_job_errors",
        tags=["batch"],
        responses={
            (200, "text/csv"): OpenApiResponse(
                OpenApiTypes.BINARY, description="CSV of the invalid rows: row, field, reason"
            ),
            **error_responses(406),
        },
        summary="Download a succeeded job's errors file (streamed)",
    )
    def get(self, request: Request, name: str, job_id: int) -> HttpResponse:
        return _file_response(request, name, job_id, "errors")
