"""Input and output serializers of the registry API: inputs parse, outputs render."""

from __future__ import annotations

import math
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.exceptions import ParseError

from config.errors import ValidationFailed
from config.parsers import parse_json
from mlregistry import hooks
from mlregistry.models import (
    ArtifactFormat,
    AuditEvent,
    ModelVersion,
    RegisteredModel,
    Stage,
    Task,
)

_SCALAR = {
    "anyOf": [{"type": "number"}, {"type": "integer"}, {"type": "string"}, {"type": "boolean"}]
}
_FEATURE = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "type": {"type": "string", "enum": ["float", "integer", "boolean", "string"]},
        "required": {"type": "boolean"},
        "min": {"type": "number", "nullable": True},
        "max": {"type": "number", "nullable": True},
        "description": {"type": "string"},
    },
    "required": ["name", "type", "required"],
}


def _as_finite_float(value: int | float) -> float | None:
    """`value` as a finite float, or None (NaN, infinity, or an integer beyond float range)."""
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


@extend_schema_field(
    {
        "type": "array",
        "items": _FEATURE,
        "description": "ordered features a request row must carry (mlregistry/schema.py)",
    }
)
class InputSchemaField(serializers.JSONField):
    pass


@extend_schema_field(
    {"type": "object", "additionalProperties": {"type": "number"}, "description": "name -> value"}
)
class MetricsField(serializers.JSONField):
    pass


@extend_schema_field({"type": "object", "additionalProperties": {}})
class JSONObjectField(serializers.JSONField):
    pass


@extend_schema_field({"type": "object", "additionalProperties": {"type": "string"}})
class LibraryVersionsField(serializers.JSONField):
    pass


@extend_schema_field(
    {"type": "array", "items": _SCALAR, "nullable": True, "description": "a classifier's labels"}
)
class ClassesField(serializers.JSONField):
    pass


@extend_schema_field({"type": "array", "items": {"type": "string"}})
class TagsField(serializers.JSONField):
    pass


@extend_schema_field({"type": "string", "description": "JSON text (a multipart form field)"})
class JSONStringField(serializers.JSONField):
    """Accepts a JSON value, or (multipart forms) a string holding JSON, parsed by the API's one
    JSON parser (its depth and NUL rules apply to it as to a JSON body)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str):
            try:
                data = parse_json(data)
            except ParseError:
                raise serializers.ValidationError("must be valid JSON") from None
            except ValidationFailed as exc:
                raise serializers.ValidationError(
                    [f"{where}: {' '.join(why)}" for where, why in exc.fields.items()]
                ) from None
        return super().to_internal_value(data)


class RegisteredModelInput(serializers.Serializer):
    name = serializers.SlugField(max_length=100)
    task = serializers.ChoiceField(choices=Task.choices, default=Task.CLASSIFICATION)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    tags = serializers.ListField(
        child=serializers.CharField(max_length=100), required=False, default=list
    )


class RegisteredModelUpdateInput(serializers.Serializer):
    task = serializers.ChoiceField(choices=Task.choices, required=False)
    description = serializers.CharField(required=False, allow_blank=True)
    tags = serializers.ListField(child=serializers.CharField(max_length=100), required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        forbidden = set(self.initial_data) & {"stage", "name", "versions", "owner"}
        if forbidden:
            raise serializers.ValidationError(
                {f: ["read-only here; use the transition endpoint for stages"] for f in forbidden}
            )
        return attrs


class ProductionVersionOutput(serializers.Serializer):
    version = serializers.IntegerField()
    artifact_sha256 = serializers.CharField()


class RegisteredModelOutput(serializers.ModelSerializer):
    # null when the user was deleted (or, for created_by, a job made it): the schema says so.
    owner = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    tags = TagsField(read_only=True)
    production_version = serializers.SerializerMethodField()
    latest_version = serializers.SerializerMethodField()

    class Meta:
        model = RegisteredModel
        fields = [
            "name",
            "task",
            "description",
            "tags",
            "owner",
            "production_version",
            "latest_version",
            "created_at",
            "updated_at",
        ]

    def get_production_version(self, obj: RegisteredModel) -> int | None:
        for version in obj.versions.all():
            if version.stage == Stage.PRODUCTION:
                return version.version
        return None

    def get_latest_version(self, obj: RegisteredModel) -> int | None:
        numbers = [v.version for v in obj.versions.all()]
        return max(numbers) if numbers else None


class ModelVersionUploadInput(serializers.Serializer):
    artifact = serializers.FileField(allow_empty_file=False, use_url=False)
    artifact_format = serializers.ChoiceField(
        choices=ArtifactFormat.choices, default=ArtifactFormat.SKOPS
    )
    input_schema = JSONStringField(required=False)
    metrics = JSONStringField(required=False)
    params = JSONStringField(required=False)
    metadata = JSONStringField(required=False)
    reference_sample = JSONStringField(required=False)
    expected_sha256 = serializers.RegexField(
        r"^[0-9a-fA-F]{64}$",
        required=False,
        help_text="SHA-256 the client computed: the upload is refused if the bytes differ.",
    )

    def _object(self, value: Any, name: str) -> Any:
        if value is not None and not isinstance(value, dict):
            raise serializers.ValidationError(f"{name} must be a JSON object")
        return value

    def validate_metrics(self, value: Any) -> Any:
        value = self._object(value, "metrics")
        for key, metric in (value or {}).items():
            if isinstance(metric, bool) or not isinstance(metric, int | float):
                raise serializers.ValidationError(f"metric {key!r} must be a number")
            if _as_finite_float(metric) is None:
                # An integer of 400 digits is valid JSON but no float: charts and comparisons
                # would raise OverflowError on every page that reads it.
                raise serializers.ValidationError(f"metric {key!r} must be a finite number")
        return value

    def validate_params(self, value: Any) -> Any:
        return self._object(value, "params")

    def validate_metadata(self, value: Any) -> Any:
        return self._object(value, "metadata")


class StageTransitionOutput(serializers.Serializer):
    from_stage = serializers.CharField()
    to_stage = serializers.CharField()
    actor = serializers.CharField(source="actor_name")
    comment = serializers.CharField()
    created_at = serializers.DateTimeField()


class ModelVersionOutput(serializers.ModelSerializer):
    name = serializers.CharField(source="model.name")
    input_schema = InputSchemaField(read_only=True)
    classes = ClassesField(read_only=True)
    metrics = MetricsField(read_only=True)
    params = JSONObjectField(read_only=True)
    metadata = JSONObjectField(read_only=True)
    library_versions = LibraryVersionsField(read_only=True)
    created_by = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )

    class Meta:
        model = ModelVersion
        fields = [
            "name",
            "version",
            "stage",
            "artifact_format",
            "artifact_sha256",
            "artifact_size",
            "input_schema",
            "classes",
            "metrics",
            "params",
            "metadata",
            "library_versions",
            "source",
            "created_at",
            "updated_at",
            "created_by",
        ]


class ModelVersionDetailOutput(ModelVersionOutput):
    transitions = StageTransitionOutput(many=True, read_only=True)
    online_metrics = serializers.SerializerMethodField()

    class Meta(ModelVersionOutput.Meta):
        fields = [*ModelVersionOutput.Meta.fields, "transitions", "online_metrics"]

    @extend_schema_field(
        {
            "type": "object",
            "properties": {
                "feedback_count": {"type": "integer"},
                "accuracy": {"type": "number", "nullable": True},
                "mae": {"type": "number", "nullable": True},
            },
            "required": ["feedback_count"],
        }
    )
    def get_online_metrics(self, obj: ModelVersion) -> dict[str, Any]:
        """Accuracy (or MAE) from clients' feedback on served predictions."""
        return hooks.online_metrics_get(version=obj)


class TransitionInput(serializers.Serializer):
    stage = serializers.ChoiceField(choices=Stage.choices)
    comment = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)
    archive_previous = serializers.BooleanField(required=False, default=True)


class RollbackInput(serializers.Serializer):
    comment = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class AuditEventQueryInput(serializers.Serializer):
    """The filters of GET /api/v1/audit-events/ (query parameters)."""

    model = serializers.SlugField(max_length=100, required=False, help_text="registered model name")
    actor = serializers.CharField(
        max_length=150, required=False, help_text="username, or a job's name"
    )
    verb = serializers.CharField(
        max_length=40, required=False, help_text="create, update, delete, transition, ..."
    )
    since = serializers.DateTimeField(
        required=False, help_text="ISO 8601 date-time; events at or after it"
    )


class AuditEventOutput(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_name")
    changes = serializers.JSONField(help_text="{field: [old, new]}")

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "created_at",
            "actor",
            "verb",
            "object_type",
            "object_id",
            "object_repr",
            "model_name",
            "changes",
            "request_id",
        ]
