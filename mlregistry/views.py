"""Registry API views: parse with an input serializer, call one service, render an output one."""

from __future__ import annotations

from django.conf import settings
from django.db.models import Max, OuterRef, Subquery
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.generics import GenericAPIView
from rest_framework.permissions import IsAdminUser
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from config.errors import PayloadTooLarge
from config.parsers import MultiPartParser
from config.renderers import BinaryRenderer, JSONErrorsMixin
from config.schema import error_responses
from mlregistry import selectors, services
from mlregistry.access import api_client_allowed_models
from mlregistry.downloads import artifact_response
from mlregistry.models import ModelVersion, RegisteredModel, Stage
from mlregistry.permissions import ArtifactDownloadPermission, RegistryPermission
from mlregistry.serializers import (
    AliasDeleteInput,
    AliasInput,
    AliasOutput,
    AuditEventOutput,
    AuditEventQueryInput,
    ModelListQueryInput,
    ModelVersionDeletedOutput,
    ModelVersionDetailOutput,
    ModelVersionListQueryInput,
    ModelVersionOutput,
    ModelVersionTransitionOutput,
    ModelVersionUpdateInput,
    ModelVersionUploadInput,
    RegisteredModelInput,
    RegisteredModelOutput,
    RegisteredModelUpdateInput,
    RollbackInput,
    TransitionInput,
)


def _models_queryset(queryset=None):
    # Two numbers per model, computed by the database: prefetching every version to find them
    # read all 10,000 rows of a model that has that many, for each page of the list.
    queryset = RegisteredModel.objects.all() if queryset is None else queryset
    production = ModelVersion.objects.filter(model=OuterRef("pk"), stage=Stage.PRODUCTION).values(
        "version"
    )[:1]
    # Ordered again: a query with an aggregate does not take Meta.ordering.
    return (
        queryset.select_related("owner")
        .annotate(
            _latest_version=Max("versions__version"), _production_version=Subquery(production)
        )
        .order_by("name")
    )


class RegisteredModelListView(GenericAPIView):
    permission_classes = [RegistryPermission]
    write_permissions = {"POST": "mlregistry.add_registeredmodel"}
    serializer_class = RegisteredModelOutput

    def get_queryset(self):
        # A client restricted to some models lists only those.
        allowed = api_client_allowed_models(user=self.request.user)
        query = ModelListQueryInput(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        queryset = selectors.registered_models_list(**_renamed_tags(query))
        queryset = _models_queryset(queryset)
        return queryset if allowed is None else queryset.filter(name__in=allowed)

    @extend_schema(
        operation_id="list_models",
        tags=["models"],
        parameters=[ModelListQueryInput],
        responses=RegisteredModelOutput(many=True),
        summary="List registered models",
        description="`?tag=team:risk` keeps models whose tag `team` is `risk` (`?tag=team`: "
        "that have the tag; repeat to require several); `?search=` matches a substring of the "
        "name or description, case-insensitive.",
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
        description="`tags` are merged into the current ones: a null value deletes the key.",
    )
    def patch(self, request: Request, name: str) -> Response:
        data = RegisteredModelUpdateInput(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        if "tags" in fields:
            fields["tags_changes"] = fields.pop("tags")
        model = services.registered_model_update(
            model=self._model(name), actor=request.user, **fields
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
        parameters=[ModelVersionListQueryInput],
        responses=ModelVersionOutput(many=True),
        summary="List a model's versions",
        description="Filters (all must hold): `?tag=key` or `?tag=key:value` (repeatable), "
        "`?stage=`, `?alias=` (the version it points to; `latest` the highest not archived), "
        "`?run_id=`.",
    )
    def get(self, request: Request, name: str) -> Response:
        query = ModelVersionListQueryInput(data=request.query_params)
        query.is_valid(raise_exception=True)
        model = selectors.registered_model_get(name=name)
        versions = selectors.model_versions_list(model=model, **_renamed_tags(query))
        page = self.paginate_queryset(versions)
        return self.get_paginated_response(ModelVersionOutput(page, many=True).data)

    @extend_schema(
        operation_id="create_version",
        tags=["versions"],
        request={"multipart/form-data": ModelVersionUploadInput},
        responses={201: ModelVersionOutput},
        summary="Upload a new version (multipart: artifact + JSON fields)",
        description="The JSON fields (input_schema, metrics, params, metadata, "
        "reference_sample, tags, training_dataset) are form fields holding JSON. With "
        "expected_sha256 the upload is refused (400) unless the received bytes have that "
        "SHA-256. Lineage (run_id, git_commit, source_url, training_dataset) is set here once. "
        "`artifact` may also be an MLflow model directory as .zip or .tar.gz (an MLmodel file "
        "with the sklearn flavor): its model file is registered, in the format MLmodel names, "
        "and its signature, input example and library versions fill input_schema, "
        "reference_sample and library_versions where no field gives them (400 for a tensor "
        "signature, another scikit-learn minor version, or an unsafe archive).",
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

    write_permissions = {
        "PATCH": "mlregistry.change_modelversion",
        "DELETE": "mlregistry.delete_modelversion",
    }

    @extend_schema(
        operation_id="update_version",
        tags=["versions"],
        request=ModelVersionUpdateInput,
        responses=ModelVersionDetailOutput,
        summary="Change a version's tags (merged: a null value deletes the key)",
        description='`{"tags": {"validated": "true", "old": null}}` sets `validated` and '
        "deletes `old`. Any other field is refused (400): stages change through /transition, "
        "lineage is set at upload.",
    )
    def patch(self, request: Request, name: str, version: int) -> Response:
        data = ModelVersionUpdateInput(data=request.data)
        data.is_valid(raise_exception=True)
        obj = selectors.model_version_get(name=name, version=version)
        services.model_version_update(
            version=obj, actor=request.user, tags_changes=data.validated_data.get("tags")
        )
        return Response(ModelVersionDetailOutput(obj).data)

    @extend_schema(
        operation_id="delete_version",
        tags=["versions"],
        responses={200: ModelVersionDeletedOutput, **error_responses(409)},
        summary="Delete a version (not the production one); its number is never reused",
        description="The answer lists the aliases that pointed to it: they are removed with "
        "it, in the same transaction.",
    )
    def delete(self, request: Request, name: str, version: int) -> Response:
        obj = selectors.model_version_get(name=name, version=version)
        removed = services.model_version_delete(version=obj, actor=request.user)
        body = {"name": name, "version": version, "deleted": True, "aliases_removed": removed}
        return Response(ModelVersionDeletedOutput(body).data)


class ModelVersionTransitionView(GenericAPIView):
    permission_classes = [RegistryPermission]
    write_permissions = {"POST": "mlregistry.promote_modelversion"}
    serializer_class = ModelVersionTransitionOutput

    @extend_schema(
        operation_id="transition_version",
        tags=["versions"],
        request=TransitionInput,
        responses={200: ModelVersionTransitionOutput, **error_responses(409)},
        summary="Change a version's stage",
        description="Promoting to production archives the previous production version. 409 "
        "when the move is not allowed from the version's current stage. Archiving removes the "
        "archived version's aliases; `aliases_removed` lists them.",
    )
    def post(self, request: Request, name: str, version: int) -> Response:
        data = TransitionInput(data=request.data)
        data.is_valid(raise_exception=True)
        obj = selectors.model_version_get(name=name, version=version)
        obj = services.model_version_transition(
            version=obj, actor=request.user, **data.validated_data
        )
        return Response(ModelVersionTransitionOutput(obj).data)


class ModelRollbackView(GenericAPIView):
    permission_classes = [RegistryPermission]
    write_permissions = {"POST": "mlregistry.promote_modelversion"}
    serializer_class = ModelVersionTransitionOutput

    @extend_schema(
        operation_id="rollback_model",
        tags=["models"],
        request=RollbackInput,
        responses={200: ModelVersionTransitionOutput, **error_responses(409)},
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
        return Response(ModelVersionTransitionOutput(obj).data)


def _renamed_tags(query) -> dict:
    fields = dict(query.validated_data)
    if "tag" in fields:
        fields["tags"] = fields.pop("tag")
    return fields


_ALIAS_PATH = OpenApiParameter(
    "alias",
    str,
    OpenApiParameter.PATH,
    description="^[a-z][a-z0-9_-]{0,63}$; `latest` (read-only) is the highest version that is "
    "not archived",
)


class ModelAliasListView(GenericAPIView):
    permission_classes = [RegistryPermission]
    serializer_class = AliasOutput
    pagination_class = None  # a handful per model, like MLflow's aliases list

    @extend_schema(
        operation_id="list_aliases",
        tags=["aliases"],
        responses=AliasOutput(many=True),
        summary="List a model's aliases and the versions they point to",
    )
    def get(self, request: Request, name: str) -> Response:
        model = selectors.registered_model_get(name=name)
        return Response(AliasOutput(selectors.model_aliases_list(model=model), many=True).data)


class ModelAliasDetailView(GenericAPIView):
    permission_classes = [RegistryPermission]
    write_permissions = {
        "PUT": "mlregistry.promote_modelversion",
        "DELETE": "mlregistry.promote_modelversion",
    }
    serializer_class = ModelVersionDetailOutput

    @extend_schema(
        operation_id="get_version_by_alias",
        tags=["aliases"],
        parameters=[_ALIAS_PATH],
        responses=ModelVersionDetailOutput,
        summary="Get the version an alias points to (the version endpoint's body)",
    )
    def get(self, request: Request, name: str, alias: str) -> Response:
        obj = selectors.model_version_by_alias_get(name=name, alias=alias)
        return Response(ModelVersionDetailOutput(obj).data)

    @extend_schema(
        operation_id="set_alias",
        tags=["aliases"],
        parameters=[_ALIAS_PATH],
        request=AliasInput,
        responses={200: AliasOutput, **error_responses(409)},
        summary="Point an alias at a version (creates or moves it)",
        description="Staff with the promote permission. 400 for a malformed or reserved name "
        "(`latest`, `v<number>`) or a version the model does not have; 409 when the version "
        "is archived. Predictions through the alias follow the move as soon as it commits.",
    )
    def put(self, request: Request, name: str, alias: str) -> Response:
        data = AliasInput(data=request.data)
        data.is_valid(raise_exception=True)
        row = services.model_alias_set(
            model=selectors.registered_model_get(name=name),
            alias=alias,
            version=data.validated_data["version"],
            actor=request.user,
            comment=data.validated_data["comment"],
        )
        return Response(AliasOutput(row).data)

    @extend_schema(
        operation_id="delete_alias",
        tags=["aliases"],
        parameters=[_ALIAS_PATH, AliasDeleteInput],
        request=None,
        responses={204: None},
        summary="Remove an alias (the version stays)",
    )
    def delete(self, request: Request, name: str, alias: str) -> Response:
        data = AliasDeleteInput(data=request.query_params)
        data.is_valid(raise_exception=True)
        services.model_alias_delete(
            model=selectors.registered_model_get(name=name),
            alias=alias,
            actor=request.user,
            comment=data.validated_data["comment"],
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


_BINARY = "application/octet-stream"


class ModelVersionArtifactView(JSONErrorsMixin, GenericAPIView):
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
