"""Registry API views: parse with an input serializer, call one service, render an output one."""

from __future__ import annotations

from django.conf import settings
from django.db.models import Prefetch
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.generics import GenericAPIView
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response

from config.errors import PayloadTooLarge
from mlregistry import selectors, services
from mlregistry.access import api_client_allowed_models
from mlregistry.models import ModelVersion, RegisteredModel
from mlregistry.permissions import RegistryPermission
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

    @extend_schema(responses=RegisteredModelOutput(many=True), summary="List registered models")
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(RegisteredModelOutput(page, many=True).data)

    @extend_schema(
        request=RegisteredModelInput,
        responses={201: RegisteredModelOutput},
        summary="Register a model",
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

    @extend_schema(summary="Get a registered model")
    def get(self, request: Request, name: str) -> Response:
        return Response(RegisteredModelOutput(self._model(name)).data)

    @extend_schema(
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

    @extend_schema(responses={204: None}, summary="Delete a model and its versions")
    def delete(self, request: Request, name: str) -> Response:
        services.registered_model_delete(model=self._model(name), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ModelVersionListView(GenericAPIView):
    permission_classes = [RegistryPermission]
    write_permissions = {"POST": "mlregistry.add_modelversion"}
    serializer_class = ModelVersionOutput
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(responses=ModelVersionOutput(many=True), summary="List a model's versions")
    def get(self, request: Request, name: str) -> Response:
        model = selectors.registered_model_get(name=name)
        page = self.paginate_queryset(selectors.model_versions_list(model=model))
        return self.get_paginated_response(ModelVersionOutput(page, many=True).data)

    @extend_schema(
        request={"multipart/form-data": ModelVersionUploadInput},
        responses={201: ModelVersionOutput},
        summary="Upload a new version (multipart: artifact + JSON fields)",
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

    @extend_schema(summary="Get one version, with its stage history")
    def get(self, request: Request, name: str, version: int) -> Response:
        obj = selectors.model_version_get(name=name, version=version)
        return Response(ModelVersionDetailOutput(obj).data)

    write_permissions = {"DELETE": "mlregistry.delete_modelversion"}

    @extend_schema(
        responses={204: None},
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
        request=TransitionInput, responses=ModelVersionOutput, summary="Change a version's stage"
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
        request=RollbackInput,
        responses=ModelVersionOutput,
        summary="Put the previous production version back into production",
    )
    def post(self, request: Request, name: str) -> Response:
        data = RollbackInput(data=request.data)
        data.is_valid(raise_exception=True)
        model = selectors.registered_model_get(name=name)
        obj = services.model_version_rollback(
            model=model, actor=request.user, **data.validated_data
        )
        return Response(ModelVersionOutput(obj).data)


class AuditEventListView(GenericAPIView):
    """The audit trail of every state change, for staff (401 without credentials, 403 for a
    client that is not staff)."""

    permission_classes = [IsAdminUser]
    serializer_class = AuditEventOutput

    @extend_schema(
        operation_id="list_audit_events",
        tags=["audit"],
        parameters=[AuditEventQueryInput],
        responses=AuditEventOutput(many=True),
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
