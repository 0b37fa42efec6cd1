"""Registry API views: parse with an input serializer, call one service, render an output one."""

from __future__ import annotations

import json

from django.conf import settings
from django.db.models import Prefetch
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.generics import GenericAPIView
from rest_framework.parsers import MultiPartParser
from rest_framework.permissions import IsAdminUser
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from config.errors import PayloadTooLarge
from config.schema import error_responses
from mlregistry import selectors, services
from mlregistry.access import api_client_allowed_models
from mlregistry.downloads import artifact_response
from mlregistry.models import ModelVersion, RegisteredModel
from mlregistry.permissions import ArtifactDownloadPermission, RegistryPermission
from mlregistry.serializers import (
    AuditEventOutput,
    AuditEventQueryInput,
    ModelVersionDetailOutput,
    ModelVersionOutput,
    ModelVersionUploadInput,
    RegisteredModelInput,
    RegisteredModelOutput,
    RegisteredModelUpdateInput,
    RollbackInput,
    TransitionInput,
)


def _models_queryset():
    return RegisteredModel.objects.select_related("owner").prefetch_related(
        Prefetch(
            "versions", queryset=ModelVersion.objects.only("id", "model_id", "version", "stage")
        )
    )


class RegisteredModelListView(GenericAPIView):
    permission_classes = [RegistryPermission]
    write_permissions = {"POST": "mlregistry.add_registeredmodel"}
    serializer_class = RegisteredModelOutput

    def get_queryset(self):
        # A client restricted to some models lists only those.
        allowed = api_client_allowed_models(user=self.request.user)
        queryset = _models_queryset()
        return queryset if allowed is None else queryset.filter(name__in=allowed)

    @extend_schema(
        operation_id="list_models",
        tags=["models"],
        responses=RegisteredModelOutput(many=True),
        summary="List registered models",
    )
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(RegisteredModelOutput(page, many=True).data)

    @extend_schema(
        operation_id="create_model",
        tags=["models"],
        request=RegisteredModelInput,
        responses={201: RegisteredModelOutput, **error_responses(409)},
        summary="Register a model",
        description="409 when a model of that name exists.",
    )
    def post(self, request: Request) -> Response:
        data = RegisteredModelInput(data=request.data)
        data.is_valid(raise_exception=True)
        model = services.registered_model_create(actor=request.user, **data.validated_data)
        return Response(RegisteredModelOutput(model).data, status=status.HTTP_201_CREATED)


class RegisteredModelDetailView(GenericAPIView):
    permission_classes = [RegistryPermission]
    write_permissions = {
        "PATCH": "mlregistry.change_registeredmodel",
        "DELETE": "mlregistry.delete_registeredmodel",
    }
    serializer_class = RegisteredModelOutput

    def _model(self, name: str) -> RegisteredModel:
        return selectors.registered_model_get(name=name)

    @extend_schema(operation_id="get_model", tags=["models"], summary="Get a registered model")
    def get(self, request: Request, name: str) -> Response:
        return Response(RegisteredModelOutput(self._model(name)).data)

    @extend_schema(
        operation_id="update_model",
        tags=["models"],
        request=RegisteredModelUpdateInput,
        responses=RegisteredModelOutput,
        summary="Update a model",
    )
    def patch(self, request: Request, name: str) -> Response:
        data = RegisteredModelUpdateInput(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        model = services.registered_model_update(
            model=self._model(name), actor=request.user, **data.validated_data
        )
        return Response(RegisteredModelOutput(model).data)

    @extend_schema(
        operation_id="delete_model",
        tags=["models"],
        responses={204: None, **error_responses(409)},
        summary="Delete a model and its versions",
        description="409 while a version is in production.",
    )
    def delete(self, request: Request, name: str) -> Response:
        services.registered_model_delete(model=self._model(name), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ModelVersionListView(GenericAPIView):
    permission_classes = [RegistryPermission]
    write_permissions = {"POST": "mlregistry.add_modelversion"}
    serializer_class = ModelVersionOutput
    parser_classes = [MultiPartParser]  # the artifact is a file: nothing else can carry it

    @extend_schema(
        operation_id="list_versions",
        tags=["versions"],
        responses=ModelVersionOutput(many=True),
        summary="List a model's versions",
    )
    def get(self, request: Request, name: str) -> Response:
        model = selectors.registered_model_get(name=name)
        page = self.paginate_queryset(selectors.model_versions_list(model=model))
        return self.get_paginated_response(ModelVersionOutput(page, many=True).data)

    @extend_schema(
        operation_id="create_version",
        tags=["versions"],
        request={"multipart/form-data": ModelVersionUploadInput},
        responses={201: ModelVersionOutput},
        summary="Upload a new version (multipart: artifact + JSON fields)",
        description="The JSON fields (input_schema, metrics, params, metadata, "
        "reference_sample) are form fields holding JSON. With expected_sha256 the upload is "
        "refused (400) unless the received bytes have that SHA-256. `artifact` may also be an "
        "MLflow model directory as .zip or .tar.gz (an MLmodel file with the sklearn flavor): "
        "its model file is registered, in the format MLmodel names, and its signature, input "
        "example and library versions fill input_schema, reference_sample and "
        "library_versions where no field gives them (400 for a tensor signature, another "
        "scikit-learn minor version, or an unsafe archive).",
    )
    def post(self, request: Request, name: str) -> Response:
        # Refuse an oversize body before it is parsed (and spooled) at all.
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
        limit = settings.MAX_ARTIFACT_SIZE
        if declared > limit + 1024 * 1024:
            raise PayloadTooLarge(
                f"Upload is larger than the limit of {limit} bytes (MAX_ARTIFACT_SIZE).",
                fields={"artifact": [f"larger than {limit} bytes"]},
            )
        model = selectors.registered_model_get(name=name)
        data = ModelVersionUploadInput(data=request.data)
        data.is_valid(raise_exception=True)
        version = services.model_version_create(
            model=model, actor=request.user, **data.validated_data
        )
        return Response(ModelVersionOutput(version).data, status=status.HTTP_201_CREATED)


class ModelVersionDetailView(GenericAPIView):
    permission_classes = [RegistryPermission]
    serializer_class = ModelVersionDetailOutput

    @extend_schema(
        operation_id="get_version",
        tags=["versions"],
        summary="Get one version, with its stage history",
    )
    def get(self, request: Request, name: str, version: int) -> Response:
        obj = selectors.model_version_get(name=name, version=version)
        return Response(ModelVersionDetailOutput(obj).data)

    write_permissions = {"DELETE": "mlregistry.delete_modelversion"}

    @extend_schema(
        operation_id="delete_version",
        tags=["versions"],
        responses={204: None, **error_responses(409)},
        summary="Delete a version (not the production one); its number is never reused",
    )
    def delete(self, request: Request, name: str, version: int) -> Response:
        obj = selectors.model_version_get(name=name, version=version)
        services.model_version_delete(version=obj, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ModelVersionTransitionView(GenericAPIView):
    permission_classes = [RegistryPermission]
    write_permissions = {"POST": "mlregistry.promote_modelversion"}
    serializer_class = ModelVersionOutput

    @extend_schema(
        operation_id="transition_version",
        tags=["versions"],
        request=TransitionInput,
        responses={200: ModelVersionOutput, **error_responses(409)},
        summary="Change a version's stage",
        description="Promoting to production archives the previous production version. 409 "
        "when the move is not allowed from the version's current stage.",
    )
    def post(self, request: Request, name: str, version: int) -> Response:
        data = TransitionInput(data=request.data)
        data.is_valid(raise_exception=True)
        obj = selectors.model_version_get(name=name, version=version)
        obj = services.model_version_transition(
            version=obj, actor=request.user, **data.validated_data
        )
        return Response(ModelVersionOutput(obj).data)


class ModelRollbackView(GenericAPIView):
    permission_classes = [RegistryPermission]
    write_permissions = {"POST": "mlregistry.promote_modelversion"}
    serializer_class = ModelVersionOutput

    @extend_schema(
        operation_id="rollback_model",
        tags=["models"],
        request=RollbackInput,
        responses={200: ModelVersionOutput, **error_responses(409)},
        summary="Put the previous production version back into production",
        description="409 when there is no previous production version to go back to.",
    )
    def post(self, request: Request, name: str) -> Response:
        data = RollbackInput(data=request.data)
        data.is_valid(raise_exception=True)
        model = selectors.registered_model_get(name=name)
        obj = services.model_version_rollback(
            model=model, actor=request.user, **data.validated_data
        )
        return Response(ModelVersionOutput(obj).data)


class BinaryRenderer(BaseRenderer):
    """Lets a client ask for the artifact with `Accept: application/octet-stream` (DRF refuses
    an Accept no renderer offers); an error reaching it is still the JSON error body."""

    media_type = "application/octet-stream"
    format = "bin"
    charset = None

    def render(self, data, accepted_media_type=None, renderer_context=None) -> bytes:
        return data if isinstance(data, bytes) else json.dumps(data).encode()


_BINARY = "application/octet-stream"


class ModelVersionArtifactView(GenericAPIView):
    permission_classes = [ArtifactDownloadPermission]
    renderer_classes = [JSONRenderer, BinaryRenderer]
    serializer_class = None

    @extend_schema(
        operation_id="download_artifact",
        tags=["versions"],
        summary="Download a version's artifact (staff or download_modelversion)",
        description="Streamed bytes, ETag = the artifact's SHA-256 (check it before loading). "
        "One `Range: bytes=first-last` range is served as 206; `If-None-Match` with the ETag "
        "gives 304.",
        parameters=[
            OpenApiParameter("Range", str, OpenApiParameter.HEADER, description="bytes=first-last"),
            OpenApiParameter("If-Range", str, OpenApiParameter.HEADER, description="an ETag"),
            OpenApiParameter("If-None-Match", str, OpenApiParameter.HEADER),
            OpenApiParameter(
                "ETag",
                str,
                OpenApiParameter.HEADER,
                response=[200, 206, 304],
                description="the artifact's SHA-256, quoted",
            ),
            OpenApiParameter(
                "Content-Range",
                str,
                OpenApiParameter.HEADER,
                response=[206, 416],
                description="bytes first-last/size (206) or bytes */size (416)",
            ),
        ],
        responses={
            (200, _BINARY): OpenApiResponse(OpenApiTypes.BINARY, description="The whole artifact."),
            (206, _BINARY): OpenApiResponse(
                OpenApiTypes.BINARY, description="The requested byte range."
            ),
            304: OpenApiResponse(description="Not modified: the ETag matched If-None-Match."),
            **error_responses(403),
            416: OpenApiResponse(
                OpenApiTypes.OBJECT, description="The range starts past the artifact's end."
            ),
        },
    )
    def get(self, request: Request, name: str, version: int):
        return artifact_response(request, selectors.model_version_get(name=name, version=version))


class AuditEventListView(GenericAPIView):
    """The audit trail of every state change, for staff (401 without credentials, 403 for a
    client that is not staff)."""

    permission_classes = [IsAdminUser]
    serializer_class = AuditEventOutput

    @extend_schema(
        operation_id="list_audit_events",
        tags=["audit"],
        parameters=[AuditEventQueryInput],
        responses={200: AuditEventOutput(many=True), **error_responses(403)},
        summary="List audit events (staff only)",
    )
    def get(self, request: Request) -> Response:
        """Newest first, paginated; a malformed filter (e.g. `since` not ISO 8601) is a 400
        naming it."""
        query = AuditEventQueryInput(data=request.query_params)
        query.is_valid(raise_exception=True)
        events = selectors.audit_events_list(**query.validated_data)
        page = self.paginate_queryset(events)
        return self.get_paginated_response(AuditEventOutput(page, many=True).data)
