"""Admin of webhooks: configure them (through the services, audited), see each one's
deliveries and attempts, redeliver one, send a test ping. The secret is shown once, on the
page that follows the creation, and never again."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from config.errors import DomainError
from config.events import EVENT_TYPES
from mlregistry.admin import DeletesThroughServices
from mlregistry.webhooks import services
from mlregistry.webhooks.models import Webhook, WebhookAttempt, WebhookDelivery
from mlregistry.webhooks.targets import TargetRefused, target_check


class WebhookForm(forms.ModelForm):
    url = forms.URLField(max_length=2000, assume_scheme="https")
    events = forms.MultipleChoiceField(
        choices=[(event, event) for event in EVENT_TYPES], widget=forms.CheckboxSelectMultiple
    )

    class Meta:
        model = Webhook
        fields = ("name", "url", "events", "model", "active")

    def clean_url(self) -> str:
        url = self.cleaned_data["url"]
        try:
            target_check(url)
        except TargetRefused as exc:
            raise forms.ValidationError(exc.fields["url"][0]) from None
        return url


class WebhookDeliveryInline(admin.TabularInline):
    model = WebhookDelivery
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("delivery_id", "event", "model_name", "status", "attempt_count", "created_at")
    readonly_fields = fields
    ordering = ("-id",)
    max_num = 0

    def get_queryset(self, request):
        return super().get_queryset(request).order_by("-id")

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Webhook)
class WebhookAdmin(DeletesThroughServices, admin.ModelAdmin):
    form = WebhookForm
    list_display = ("name", "url", "events_display", "model", "active_display", "failing_since")
    list_filter = ("active",)
    search_fields = ("name", "url")
    readonly_fields = ("disabled_reason", "failing_since", "created_by", "created_at", "updated_at")
    inlines = [WebhookDeliveryInline]
    actions = ["send_ping", "delete_selected"]

    def get_inlines(self, request, obj=None):
        # A new webhook has no deliveries yet.
        return self.inlines if obj is not None else []

    @admin.display(description="events")
    def events_display(self, obj: Webhook) -> str:
        return ", ".join(obj.events)

    @admin.display(description="active", boolean=False)
    def active_display(self, obj: Webhook) -> str:
        if obj.active:
            return "yes"
        if obj.disabled_reason:
            return format_html(
                '<strong style="color:#ba2121">disabled: {}</strong>', obj.disabled_reason
            )
        return "no"

    def save_model(self, request, obj, form, change):
        """Through the services: one audit row per change, the secret generated there."""
        data = form.cleaned_data
        if change:
            services.webhook_update(
                webhook=obj,
                actor=request.user,
                **{field: data[field] for field in form.changed_data if field in data},
            )
            return
        created = services.webhook_create(
            name=data["name"],
            url=data["url"],
            events=data["events"],
            model=data.get("model"),
            active=data.get("active", True),
            actor=request.user,
        )
        obj.pk = created.pk
        obj.secret = created.secret
        obj.created_at, obj.updated_at = created.created_at, created.updated_at
        obj._state.adding = False
        obj._state.db = created._state.db

    def response_add(self, request, obj, post_url_continue=None):
        # The one page that ever shows the secret; it is not put in a message (a cookie).
        return TemplateResponse(
            request,
            "admin/mlregistry/webhook/secret.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "webhook": obj,
                "secret": obj.secret,
                "change_url": reverse("admin:mlregistry_webhook_change", args=[obj.pk]),
                "title": "Webhook created: copy its secret now",
            },
        )

    def _delete_with_service(self, request, obj) -> None:
        services.webhook_delete(webhook=obj, actor=request.user)

    @admin.action(permissions=["change"], description="Send a test ping")
    def send_ping(self, request: HttpRequest, queryset) -> None:
        for webhook in queryset:
            try:
                delivery = services.webhook_ping(webhook=webhook, actor=request.user)
            except DomainError as exc:
                self.message_user(request, f"{webhook}: {exc.full_message()}", messages.ERROR)
            else:
                self.message_user(
                    request,
                    f"{webhook}: ping queued (delivery {delivery.delivery_id}); its result "
                    "appears under Deliveries.",
                )


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    extra = 0
    can_delete = False
    fields = ("number", "started_at", "status_code", "duration_ms", "error", "response_excerpt")
    readonly_fields = fields
    max_num = 0

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    """Read-only: deliveries are written by events and attempts, never edited."""

    list_display = ("delivery_id", "webhook", "event", "model_name", "status", "attempt_count")
    list_filter = ("status", "event", "webhook")
    search_fields = ("delivery_id", "event_id", "model_name")
    fields = (
        "webhook",
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
        "body",
    )
    readonly_fields = fields
    inlines = [WebhookAttemptInline]
    actions = ["redeliver"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def has_redeliver_permission(self, request) -> bool:
        return request.user.has_perm("mlregistry.change_webhook")

    @admin.action(permissions=["redeliver"], description="Redeliver (as a new delivery)")
    def redeliver(self, request: HttpRequest, queryset) -> HttpResponseRedirect | None:
        for delivery in queryset.select_related("webhook"):
            try:
                copy = services.webhook_delivery_redeliver(delivery=delivery, actor=request.user)
            except DomainError as exc:
                self.message_user(request, f"{delivery}: {exc.full_message()}", messages.ERROR)
            else:
                self.message_user(
                    request, f"Redelivery of {delivery.delivery_id} queued as {copy.delivery_id}."
                )
        return None
