"""Admin for who may call the API: client model restrictions and API tokens."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.utils import timezone
from knox.admin import AuthTokenAdmin as KnoxAuthTokenAdmin
from knox.models import AuthToken

from mlregistry.access import (
    api_client_policy_delete,
    api_client_policy_save,
    api_tokens_revoke,
    user_deactivate,
)
from mlregistry.models import ApiClientPolicy, AuditEvent


@admin.register(ApiClientPolicy)
class ApiClientPolicyAdmin(admin.ModelAdmin):
    list_display = ("user", "models_summary", "note", "updated_at")
    search_fields = ("user__username", "note", "allowed_models__name")
    raw_id_fields = ("user",)
    filter_horizontal = ("allowed_models",)
    readonly_fields = ("updated_at",)

    def get_queryset(self, request):
        return (
            super().get_queryset(request).select_related("user").prefetch_related("allowed_models")
        )

    @admin.display(description="allowed models")
    def models_summary(self, obj: ApiClientPolicy) -> str:
        return ", ".join(m.name for m in obj.allowed_models.all()) or "— (none)"

    def save_model(self, request, obj, form, change):
        """Through the service (the audit row); it saves the model list too."""
        saved = api_client_policy_save(
            user=form.cleaned_data["user"],
            allowed_models=form.cleaned_data["allowed_models"],
            note=form.cleaned_data.get("note", ""),
            actor=request.user,
        )
        obj.pk, obj.updated_at = saved.pk, saved.updated_at
        obj._state.adding = False

    def save_related(self, request, form, formsets, change):
        # save_model already set the model list; the form's save_m2m would write it again.
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    def delete_model(self, request, obj):
        api_client_policy_delete(policy=obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        for policy in queryset:
            api_client_policy_delete(policy=policy, actor=request.user)


class TokenStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("expired", "Expired")]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "active":
            return queryset.exclude(expiry__lte=now)
        if self.value() == "expired":
            return queryset.filter(expiry__lte=now)
        return queryset


admin.site.unregister(AuthToken)


@admin.register(AuthToken)
class AuthTokenAdmin(KnoxAuthTokenAdmin):
    """Tokens are listed and revoked here; they are created with `manage.py create_api_token`,
    which shows the secret once (only its digest is stored)."""

    list_display = ("token_key", "user", "created", "expiry", "status")
    list_filter = (TokenStatusFilter, "user__is_staff")
    search_fields = ("token_key", "user__username")
    list_select_related = ("user",)
    ordering = ("-created",)
    fields = ("user", "token_key", "created", "expiry")
    readonly_fields = fields
    actions = ["revoke"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # "revoke" says what deleting a token means
        return actions

    @admin.display(description="status")
    def status(self, obj: AuthToken) -> str:
        if obj.expiry is None:
            return "active (never expires)"
        return "expired" if obj.expiry <= timezone.now() else "active"

    @admin.action(description="Revoke selected tokens", permissions=["delete"])
    def revoke(self, request, queryset):
        count = api_tokens_revoke(tokens=queryset.select_related("user"), actor=request.user)
        self.message_user(request, f"Revoked {count} token(s).")


User = get_user_model()
if admin.site.is_registered(User):
    admin.site.unregister(User)


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    """Django's user admin, with a bulk deactivation that goes through the service: a bulk
    `update()` would leave the users' cached token authentications answering."""

    actions = ["deactivate"]

    @admin.action(description="Deactivate selected users", permissions=["change"])
    def deactivate(self, request, queryset):
        count = user_deactivate(users=queryset, actor=request.user)
        self.message_user(request, f"Deactivated {count} user(s); their tokens stop working now.")


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """The audit trail, read-only: rows are written only by the services, in their transaction."""

    list_display = ("created_at", "actor_name", "verb", "object_type", "object_repr", "request_id")
    list_filter = ("verb", "object_type", "actor_name", "created_at")
    search_fields = ("actor_name", "object_repr", "object_id", "model_name", "request_id")
    date_hierarchy = "created_at"
    list_select_related = ("actor_user",)
    fields = (
        "created_at",
        "actor_user",
        "actor_name",
        "verb",
        "object_type",
        "object_id",
        "object_repr",
        "model_name",
        "changes",
        "request_id",
    )
    readonly_fields = fields

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
