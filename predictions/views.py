"""Predictions API: predict (production / split, pinned version, the seeds' alias), traffic
splits and feedback. Views parse, call one service, render."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    PolymorphicProxySerializer,
    extend_schema,
)
from rest_framework import status
from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import APIException, AuthenticationFailed
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.errors import DomainError
from config.parsers import content_type_check
from config.schema import error_responses
from config.throttling import RefusedTokenThrottled, ScopeRateThrottle
from mlregistry.access import access_cache_key
from mlregistry.models import RegisteredModel
from mlregistry.permissions import RegistryPermission
from mlregistry.selectors import (
    registered_model_get,
    routing_cache_key,
    routing_generation_key,
)
from predictions import selectors, services
from predictions.auth import (
    CachedTokenAuthentication,
    auth_cache_key_for_request,
    token_user_forget,
    token_user_pk,
)
from predictions.body import PredictBody, read_body
from predictions.cache import cache_prefetch, cache_prefetch_clear
from predictions.rendering import JSONFirstContentNegotiation, ORJSONParser, ORJSONRenderer
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


class _PredictBase(APIView):
    authentication_classes = [CachedTokenAuthentication, SessionAuthentication]
    permission_classes = [IsAuthenticated]
    parser_classes = [ORJSONParser]
    renderer_classes = [ORJSONRenderer]
    content_negotiation_class = JSONFirstContentNegotiation
    throttle_scope = "predict"  # what config.throttling.request_scope finds from the path

    # Pinned versions skip the result-key guess (it follows production routing only).
    guess_result_key = True

    def initial(self, request: Request, *args, **kwargs) -> None:
        # One cache round trip for the token, the routing entry, the caller's access policy,
        # its throttle counter and (when this process can guess it) the result, before
        # authentication reads the first of them (config/readahead.py). Nothing fetched here is
        # served unless authentication, the access check and routing then agree.
        keys: list[str] = []
        increments: list[tuple[str, int]] = []
        token_key = auth_cache_key_for_request(request)
        user_pk = None
        if token_key and settings.PREDICTION_AUTH_CACHE_SECONDS > 0:
            keys.append(token_key)
            user_pk = token_user_pk(token_key)
            if user_pk is not None:
                keys.append(access_cache_key(user_pk))
                counter = ScopeRateThrottle.counter(request, self, ident=f"user:{user_pk}")
                if counter is not None:
                    increments.append((counter[0], counter[2]))
        shared = frozenset(keys)  # the token, access policy and routing entry are only read
        name = kwargs.get("name")
        if name:
            keys.append(routing_cache_key(name))
            keys.append(routing_generation_key(name))
            shared |= {keys[-2], keys[-1]}
            # The body is read ahead only for a token this process has verified before: a
            # made-up token must never make the server wait for a body (a slow client sending
            # one would hold this thread); it gets its 401 first.
            if self.guess_result_key and user_pk is not None:
                guess = None
                body = self._body_ahead(request)
                if body is not None:
                    guess = services.result_cache_key_guess(model_name=name, body=body)
                if guess:
                    keys.append(guess)
        cache_prefetch(keys, increments, shared=shared)
        try:
            super().initial(request, *args, **kwargs)
        except (AuthenticationFailed, RefusedTokenThrottled):
            # The token was refused (revoked, expired, its user deactivated) after its former
            # user's counter was incremented ahead: give the count back and stop reading ahead
            # for it, so requests with a revoked token cannot use up that user's budget.
            if increments:
                token_user_forget(token_key)
                ScopeRateThrottle.refund_ahead(increments[0][0])
            raise

    def finalize_response(self, request, response, *args, **kwargs):
        cache_prefetch_clear()
        return super().finalize_response(request, response, *args, **kwargs)

    def _body(self, request: Request) -> PredictBody:
        # The body is read raw, not through DRF's parser: the service decodes plainly valid
        # rows straight into a matrix with the routed version's schema (predictions/body.py).
        body = getattr(self, "_predict_body", None)
        if body is None:
            if getattr(self, "_body_error", None) is not None:
                raise self._body_error
            content_type_check(request.content_type, accepted=("application/json",))
            body = self._predict_body = PredictBody(read_body(request.stream))
        return body

    def _body_ahead(self, request: Request) -> PredictBody | None:
        """The body for the result-key guess, read before authentication: any error waits for
        _serve (a bad token is a 401 whatever the body)."""
        try:
            return self._body(request)
        except (APIException, DomainError) as exc:
            self._body_error = exc
            return None

    def _serve(
        self, request: Request, name: str, version: int | None = None, alias: str | None = None
    ) -> Response:
        result = services.prediction_serve(
            user=request.user,
            model_name=name,
            body=self._body(request),
            request_id=request.request_id,
            version_number=version,
            client_id=request.headers.get("X-Client-Id") or None,
            alias=alias,
        )
        return Response(result)


class PredictView(_PredictBase):
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
        return self._serve(request, name)


class PredictVersionView(_PredictBase):
    guess_result_key = False

    @extend_schema(
        operation_id="predict_version",
        tags=["predict"],
        request=_PREDICT_REQUEST,
        responses={200: _PREDICT_RESPONSE, **error_responses(400, 422)},
        examples=_PREDICT_EXAMPLES,
        summary="Predict with one version (archived versions: staff only)",
    )
    def post(self, request: Request, name: str, version: int) -> Response:
        return self._serve(request, name, version)


class PredictByAliasView(_PredictBase):
    guess_result_key = False  # the read-ahead's guess follows production routing only

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
        return self._serve(request, name, alias=alias)


class PredictAliasView(_PredictBase):
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
        return self._serve(request, selectors.predict_alias_resolve(model_id=model_id))


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
