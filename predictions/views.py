"""Predictions API: predict (production / split, pinned version, the seeds' alias), traffic
splits and feedback. Views parse, call one service (or predictions.serving), render."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    PolymorphicProxySerializer,
    extend_schema,
)
from rest_framework import status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.schema import error_responses
from mlregistry.models import RegisteredModel
from mlregistry.permissions import RegistryPermission
from mlregistry.selectors import registered_model_get
from predictions import selectors, services
from predictions.serializers import (
    BatchPredictResponse,
    FeedbackInput,
    FeedbackOutput,
    PredictBatch,
    PredictResponse,
    PredictSingle,
    TrafficSplitInput,
    TrafficSplitListOutput,
    TrafficSplitOutput,
)
from predictions.serving import ServingView

_PREDICT_REQUEST = PolymorphicProxySerializer(
    component_name="Predict",
    serializers=[PredictSingle, PredictBatch],
    resource_type_field_name=None,
)
_PREDICT_RESPONSE = PolymorphicProxySerializer(
    component_name="PredictResult",
    serializers=[PredictResponse, BatchPredictResponse],
    resource_type_field_name=None,
)
_IRIS_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
_PREDICT_EXAMPLES = [
    OpenApiExample("single row", value={"features": _IRIS_ROW}, request_only=True),
    OpenApiExample(
        "batch",
        value={"instances": [_IRIS_ROW, {**_IRIS_ROW, "petal_length": 4.7}]},
        request_only=True,
    ),
    OpenApiExample(
        "single row",
        value={
            "prediction": "setosa",
            "confidence": 0.98,
            "probabilities": {"setosa": 0.98, "versicolor": 0.02, "virginica": 0.0},
            "model": "iris",
            "model_version": 3,
            "stage": "production",
            "cached": False,
            "request_id": "5f0c6e7a9b8d4e21a3c4b5d6e7f80912",
            "timestamp": "2026-01-01T12:00:00+00:00",
        },
        response_only=True,
        status_codes=["200"],
    ),
    OpenApiExample(
        "batch",
        value={
            "predictions": [
                {"prediction": "setosa", "confidence": 0.98, "probabilities": None},
                {"prediction": "versicolor", "confidence": 0.71, "probabilities": None},
            ],
            "model": "iris",
            "model_version": 3,
            "stage": "production",
            "cached": False,
            "request_id": "5f0c6e7a9b8d4e21a3c4b5d6e7f80912",
            "timestamp": "2026-01-01T12:00:00+00:00",
        },
        response_only=True,
        status_codes=["200"],
    ),
    OpenApiExample(
        "validation error",
        value={
            "error": {
                "type": "validation_error",
                "message": "Invalid input: petal_width: required feature is missing",
                "fields": {"petal_width": ["required feature is missing"]},
                "request_id": "5f0c6e7a9b8d4e21a3c4b5d6e7f80912",
            }
        },
        response_only=True,
        status_codes=["400"],
    ),
]
_CLIENT_HEADER = OpenApiParameter(
    "X-Client-Id", str, OpenApiParameter.HEADER, description="sticky A/B routing key"
)


class PredictView(ServingView):
    @extend_schema(
        operation_id="predict",
        tags=["predict"],
        request=_PREDICT_REQUEST,
        responses={200: _PREDICT_RESPONSE, **error_responses(400, 409, 422)},
        parameters=[_CLIENT_HEADER],
        examples=_PREDICT_EXAMPLES,
        summary="Predict with the production version (or the model's traffic split)",
        description="`features` (one row) answers a PredictResponse, `instances` (a batch) a "
        "BatchPredictResponse. 409 when the model has no production version and no split.",
    )
    def post(self, request: Request, name: str) -> Response:
        return Response(self.served(request, self.target(name=name)).native())


class PredictVersionView(ServingView):
    @extend_schema(
        operation_id="predict_version",
        tags=["predict"],
        request=_PREDICT_REQUEST,
        responses={200: _PREDICT_RESPONSE, **error_responses(400, 422)},
        examples=_PREDICT_EXAMPLES,
        summary="Predict with one version (archived versions: staff only)",
    )
    def post(self, request: Request, name: str, version: int) -> Response:
        return Response(self.served(request, self.target(name=name, version=version)).native())


class PredictByAliasView(ServingView):
    @extend_schema(
        operation_id="predict_alias",
        tags=["predict"],
        request=_PREDICT_REQUEST,
        responses={200: _PREDICT_RESPONSE, **error_responses(400, 422)},
        examples=_PREDICT_EXAMPLES,
        summary="Predict with the version an alias points to (`latest`: highest not archived)",
        description="The answer adds `alias`. 404 when the model has no such alias. A move of "
        "the alias applies to every request that starts after it commits.",
    )
    def post(self, request: Request, name: str, alias: str) -> Response:
        answer = self.served(request, self.target(name=name, alias=alias)).native()
        return Response({**answer, "alias": alias})


class PredictAliasView(ServingView):
    def planned_target(self, kwargs: dict[str, Any]) -> None:
        return None  # the model id is resolved only after authentication

    @extend_schema(
        operation_id="predict_legacy",
        tags=["predict"],
        deprecated=True,
        request=_PREDICT_REQUEST,
        responses={200: _PREDICT_RESPONSE, **error_responses(400, 409, 422)},
        parameters=[_CLIENT_HEADER],
        examples=_PREDICT_EXAMPLES,
        summary="Deprecated alias of /api/v1/models/{name}/predict (model id or name)",
        description="An exact model name wins; a string of ASCII digits that names no model is a "
        "model id; anything else that is no model name answers 404.",
    )
    def post(self, request: Request, model_id: str) -> Response:
        name = selectors.predict_alias_resolve(model_id=model_id)
        return Response(self.served(request, self.target(name=name)).native())


class TrafficSplitView(APIView):
    serializer_class = TrafficSplitListOutput
    permission_classes = [RegistryPermission]
    write_permissions = {
        "PUT": "mlregistry.promote_modelversion",
        "DELETE": "mlregistry.promote_modelversion",
    }

    def _render(self, model: RegisteredModel) -> dict[str, Any]:
        rows = selectors.traffic_split_list(model=model)
        return {"model": model.name, "splits": TrafficSplitOutput(rows, many=True).data}

    @extend_schema(
        operation_id="get_traffic",
        tags=["traffic"],
        responses=TrafficSplitListOutput,
        summary="Get a model's traffic split (empty: all traffic to production)",
    )
    def get(self, request: Request, name: str) -> Response:
        return Response(self._render(registered_model_get(name=name)))

    @extend_schema(
        operation_id="set_traffic",
        tags=["traffic"],
        request=TrafficSplitInput,
        responses=TrafficSplitListOutput,
        summary="Set a model's traffic split",
    )
    def put(self, request: Request, name: str) -> Response:
        data = TrafficSplitInput(data=request.data)
        data.is_valid(raise_exception=True)
        model = registered_model_get(name=name)
        services.traffic_split_set(
            model=model, splits=data.validated_data["splits"], actor=request.user
        )
        return Response(self._render(model))

    @extend_schema(
        operation_id="delete_traffic",
        tags=["traffic"],
        responses={204: None},
        summary="End a model's traffic split",
    )
    def delete(self, request: Request, name: str) -> Response:
        services.traffic_split_clear(model=registered_model_get(name=name), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class FeedbackView(APIView):
    serializer_class = FeedbackOutput
    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="record_feedback",
        tags=["feedback"],
        request=FeedbackInput,
        responses={200: FeedbackOutput, **error_responses(409)},
        summary="Record the true outcome of a prediction",
        description="409 when several API clients chose this X-Request-ID (staff only).",
    )
    def post(self, request: Request, request_id: str) -> Response:
        data = FeedbackInput(data=request.data)
        data.is_valid(raise_exception=True)
        count = services.prediction_feedback_record(
            request_id=request_id, actor=request.user, **data.validated_data
        )
        return Response({"request_id": request_id, "rows": count})
