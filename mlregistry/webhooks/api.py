"""/api/v1/webhooks/: staff configure webhooks and look at their deliveries. Every operation
needs a staff account with the webhook permission of the method (view/add/change/delete);
the secret is in the creation's answer only."""

from __future__ import annotations

import uuid

from django.db.models import Prefetch
from django.urls import path, register_converter
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.generics import GenericAPIView
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response

from config.errors import NotFoundError, ValidationFailed
from config.events import EVENT_TYPES
from config.fields import KnownFieldsMixin
from config.schema import error_responses
from mlregistry import selectors
from mlregistry.webhooks import services
from mlregistry.webhooks.models import Webhook, WebhookAttempt, WebhookDelivery

_PERMISSION_BY_METHOD = {
    "GET": "mlregistry.view_webhook",
    "HEAD": "mlregistry.view_webhook",
    "OPTIONS": "mlregistry.view_webhook",
    "POST": "mlregistry.add_webhook",
    "PATCH": "mlregistry.change_webhook",
    "DELETE": "mlregistry.delete_webhook",
}


class WebhookPermission(BasePermission):
    """Staff holding the method's webhook permission; a view may name another in
    `required_permission` (ping and redeliver need change_webhook)."""

    message = "Webhooks are configured by staff holding the webhook permissions."

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated and user.is_staff):
            return False
        if request.method.lower() not in view.http_method_names or not hasattr(
            view, request.method.lower()
        ):
            return True  # the view answers 405 naming the methods it has
        perm = getattr(view, "required_permission", None) or _PERMISSION_BY_METHOD.get(
            request.method
        )
        return bool(perm and user.has_perm(perm))


class WebhookInput(KnownFieldsMixin, serializers.Serializer):
    name = serializers.CharField(max_length=100)
    url = serializers.CharField(max_length=2000, help_text="http(s) URL receiving POSTs")
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=EVENT_TYPES), allow_empty=False
    )
    model = serializers.SlugField(
        max_length=100,
        required=False,
        allow_null=True,
        default=None,
        help_text="only this registered model's events; null for every model",
    )
    active = serializers.BooleanField(required=False, default=True)

    unknown_field_reasons = {"secret": "read-only: it is set at creation"}


class WebhookUpdateInput(WebhookInput):
    # No defaults in a PATCH body: the schema would show them, and a generated client sends a
    # field's default with every update (re-enabling a disabled webhook on a rename).
    model = serializers.SlugField(
        max_length=100,
        required=False,
        allow_null=True,
        help_text="only this registered model's events; null for every model",
    )
    active = serializers.BooleanField(required=False)


class WebhookOutput(serializers.ModelSerializer):
    model = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)
    events = serializers.ListField(child=serializers.CharField())
    disabled_reason = serializers.CharField(
        help_text="why the registry turned it off (it kept failing); empty otherwise"
    )

    class Meta:
        model = Webhook
        fields = [
            "id",
            "name",
            "url",
            "events",
            "model",
            "active",
            "disabled_reason",
            "failing_since",
            "created_at",
            "updated_at",
        ]


class WebhookCreatedOutput(WebhookOutput):
    secret = serializers.CharField(help_text="shown in this answer only: store it now")

    class Meta(WebhookOutput.Meta):
        fields = [*WebhookOutput.Meta.fields, "secret"]


class WebhookAttemptOutput(serializers.ModelSerializer):
    class Meta:
        model = WebhookAttempt
        fields = ["number", "started_at", "status_code", "duration_ms", "response_excerpt", "error"]


class WebhookDeliveryOutput(serializers.ModelSerializer):
    redelivery_of = serializers.SlugRelatedField(
        slug_field="delivery_id", read_only=True, allow_null=True
    )
    attempts = WebhookAttemptOutput(many=True, read_only=True)

    class Meta:
        model = WebhookDelivery
        fields = [
            "delivery_id",
            "event_id",
            "event",
            "model_name",
            "status",
            "attempt_count",
            "next_attempt_at",
            "created_at",
            "finished_at",
            "redelivery_of",
            "attempts",
        ]


def _webhook_get(webhook_id: int) -> Webhook:
    webhook = Webhook.objects.select_related("model").filter(pk=webhook_id).first()
    if webhook is None:
        raise NotFoundError(f"No webhook {webhook_id}.")
    return webhook


def _model_arg(validated: dict) -> dict:
    """`model` (a name) as the registered model; ValidationFailed naming `model` when there is
    none of that name (the webhook's own path exists: a 404 would say it does not)."""
    if "model" in validated:
        name = validated.pop("model")
        try:
            validated["model"] = None if name is None else selectors.registered_model_get(name=name)
        except NotFoundError as exc:
            raise ValidationFailed(exc.message, fields={"model": [exc.message]}) from None
    return validated


class WebhookListView(GenericAPIView):
    permission_classes = [WebhookPermission]
    serializer_class = WebhookOutput
    queryset = Webhook.objects.select_related("model").order_by("id")

    @extend_schema(
        operation_id="list_webhooks",
        tags=["webhooks"],
        responses={200: WebhookOutput(many=True), **error_responses(403)},
        summary="List webhooks (staff)",
    )
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(WebhookOutput(page, many=True).data)

    @extend_schema(
        operation_id="create_webhook",
        tags=["webhooks"],
        request=WebhookInput,
        responses={201: WebhookCreatedOutput, **error_responses(403)},
        summary="Create a webhook; the answer holds its secret, shown this once",
        description=(
            "400 naming `url` when it is not http(s) or resolves to a loopback, private or "
            "link-local address not listed in WEBHOOK_ALLOWED_HOSTS; naming `model` when no "
            "such model exists."
        ),
    )
    def post(self, request: Request) -> Response:
        data = WebhookInput(data=request.data)
        data.is_valid(raise_exception=True)
        webhook = services.webhook_create(actor=request.user, **_model_arg(data.validated_data))
        return Response(WebhookCreatedOutput(webhook).data, status=status.HTTP_201_CREATED)


class WebhookDetailView(GenericAPIView):
    permission_classes = [WebhookPermission]
    serializer_class = WebhookOutput

    @extend_schema(
        operation_id="get_webhook",
        tags=["webhooks"],
        responses={200: WebhookOutput, **error_responses(403)},
        summary="Get a webhook (never its secret)",
    )
    def get(self, request: Request, webhook_id: int) -> Response:
        return Response(WebhookOutput(_webhook_get(webhook_id)).data)

    @extend_schema(
        operation_id="update_webhook",
        tags=["webhooks"],
        request=WebhookUpdateInput(partial=True),
        responses={200: WebhookOutput, **error_responses(403)},
        summary="Change a webhook; active=true turns a disabled one back on",
    )
    def patch(self, request: Request, webhook_id: int) -> Response:
        data = WebhookUpdateInput(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        webhook = services.webhook_update(
            webhook=_webhook_get(webhook_id),
            actor=request.user,
            **_model_arg(dict(data.validated_data)),
        )
        return Response(WebhookOutput(webhook).data)

    @extend_schema(
        operation_id="delete_webhook",
        tags=["webhooks"],
        responses={204: None, **error_responses(403)},
        summary="Delete a webhook and its deliveries",
    )
    def delete(self, request: Request, webhook_id: int) -> Response:
        services.webhook_delete(webhook=_webhook_get(webhook_id), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookDeliveryListView(GenericAPIView):
    permission_classes = [WebhookPermission]
    serializer_class = WebhookDeliveryOutput

    @extend_schema(
        operation_id="list_webhook_deliveries",
        tags=["webhooks"],
        responses={200: WebhookDeliveryOutput(many=True), **error_responses(403)},
        summary="A webhook's deliveries, newest first, each with its attempts",
    )
    def get(self, request: Request, webhook_id: int) -> Response:
        webhook = _webhook_get(webhook_id)
        deliveries = (
            webhook.deliveries.select_related("redelivery_of")
            .prefetch_related(Prefetch("attempts", queryset=WebhookAttempt.objects.all()))
            .order_by("-id")
        )
        page = self.paginate_queryset(deliveries)
        return self.get_paginated_response(WebhookDeliveryOutput(page, many=True).data)


class WebhookPingView(GenericAPIView):
    permission_classes = [WebhookPermission]
    required_permission = "mlregistry.change_webhook"
    serializer_class = WebhookDeliveryOutput

    @extend_schema(
        operation_id="ping_webhook",
        tags=["webhooks"],
        request=None,
        responses={202: WebhookDeliveryOutput, **error_responses(403)},
        summary="Send a test `ping` event to this webhook (queued; see its deliveries)",
    )
    def post(self, request: Request, webhook_id: int) -> Response:
        delivery = services.webhook_ping(webhook=_webhook_get(webhook_id), actor=request.user)
        return Response(WebhookDeliveryOutput(delivery).data, status=status.HTTP_202_ACCEPTED)


class WebhookRedeliverView(GenericAPIView):
    permission_classes = [WebhookPermission]
    required_permission = "mlregistry.change_webhook"
    serializer_class = WebhookDeliveryOutput

    @extend_schema(
        operation_id="redeliver_webhook_delivery",
        tags=["webhooks"],
        parameters=[OpenApiParameter("delivery_id", OpenApiTypes.UUID, OpenApiParameter.PATH)],
        request=None,
        responses={202: WebhookDeliveryOutput, **error_responses(403)},
        summary="Send a delivery's event again, as a new delivery (queued)",
    )
    def post(self, request: Request, webhook_id: int, delivery_id: str) -> Response:
        webhook = _webhook_get(webhook_id)
        delivery = webhook.deliveries.filter(delivery_id=delivery_id).first()
        if delivery is None:
            raise NotFoundError(f"Webhook {webhook_id} has no delivery {delivery_id}.")
        copy = services.webhook_delivery_redeliver(delivery=delivery, actor=request.user)
        return Response(WebhookDeliveryOutput(copy).data, status=status.HTTP_202_ACCEPTED)


class _AnyCaseUUIDConverter:
    """A UUID in either case: RFC 9562 (section 4) reads hex digits case-insensitively, and
    some clients print them upper-case; Django's `uuid` converter matches lower case only."""

    regex = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"

    def to_python(self, value: str) -> uuid.UUID:
        return uuid.UUID(value)

    def to_url(self, value: uuid.UUID) -> str:
        return str(value)


register_converter(_AnyCaseUUIDConverter, "anycaseuuid")

urlpatterns = [
    path("webhooks/", WebhookListView.as_view(), name="webhook-list"),
    path("webhooks/<int:webhook_id>/", WebhookDetailView.as_view(), name="webhook-detail"),
    path(
        "webhooks/<int:webhook_id>/deliveries/",
        WebhookDeliveryListView.as_view(),
        name="webhook-delivery-list",
    ),
    path("webhooks/<int:webhook_id>/ping", WebhookPingView.as_view(), name="webhook-ping"),
    path(
        "webhooks/<int:webhook_id>/deliveries/<anycaseuuid:delivery_id>/redeliver",
        WebhookRedeliverView.as_view(),
        name="webhook-redeliver",
    ),
]
