"""Input and output serializers of the registry API: inputs parse, outputs render."""

from __future__ import annotations

import math
from typing import Any

from django.db.models import Max
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.exceptions import ParseError

from config.errors import ValidationFailed
from config.fields import AsciiIntegerField, KnownFieldsMixin
from config.parsers import parse_json
from mlregistry import hooks
from mlregistry.models import (
    ArtifactFormat,
    AuditEvent,
    ModelAlias,
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


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": {"type": "string", "maxLength": 5000},
        "description": "key -> value; keys ^[A-Za-z0-9_.:/-]{1,128}$ (mlregistry/tags.py)",
    }
)
class TagsField(serializers.JSONField):
    pass


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": {"type": "string", "maxLength": 5000, "nullable": True},
        "description": "key -> value merged into the current tags; a null value deletes the "
        "key. Keys ^[A-Za-z0-9_.:/-]{1,128}$.",
    }
)
class TagsChangesField(serializers.JSONField):
    """Checked by the service (mlregistry.tags), which names each bad key."""


@extend_schema_field(
    {
        "oneOf": [
            {"type": "object", "additionalProperties": {"type": "string", "maxLength": 5000}},
            {"type": "array", "items": {"type": "string"}, "deprecated": True},
        ],
        "description": "key -> value; a list of keys (the former form) gives empty values",
    }
)
class TagsInputField(serializers.JSONField):
    pass


@extend_schema_field(
    {
        "type": "object",
        "nullable": True,
        "properties": {
            "uri": {"type": "string", "maxLength": 2000},
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        },
        "required": ["uri"],
        "description": "the data the version was trained on (null when not recorded)",
    }
)
class TrainingDatasetField(serializers.Field):
    def to_representation(self, obj: ModelVersion) -> dict[str, str] | None:
        if not obj.training_dataset_uri:
            return None
        out = {"uri": obj.training_dataset_uri}
        if obj.training_dataset_sha256:
            out["sha256"] = obj.training_dataset_sha256
        return out


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


class RegisteredModelInput(KnownFieldsMixin, serializers.Serializer):
    name = serializers.SlugField(max_length=100)
    task = serializers.ChoiceField(choices=Task.choices, default=Task.CLASSIFICATION)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    tags = TagsInputField(required=False, default=dict)


class RegisteredModelUpdateInput(KnownFieldsMixin, serializers.Serializer):
    task = serializers.ChoiceField(choices=Task.choices, required=False)
    description = serializers.CharField(required=False, allow_blank=True)
    tags = TagsChangesField(required=False, help_text="merged: a null value deletes the key")

    unknown_field_reasons = {
        "stage": "read-only here: stages change through .../versions/{version}/transition",
        "versions": "read-only here: versions are uploaded to .../versions/",
    }


class ProductionVersionOutput(serializers.Serializer):
    version = AsciiIntegerField()
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
        if hasattr(obj, "_production_version"):  # annotated by the list's queryset
            return obj._production_version
        version = obj.versions.filter(stage=Stage.PRODUCTION).values_list("version", flat=True)
        return version.first()

    def get_latest_version(self, obj: RegisteredModel) -> int | None:
        if hasattr(obj, "_latest_version"):
            return obj._latest_version
        return obj.versions.aggregate(n=Max("version"))["n"]


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
    tags = JSONStringField(required=False, help_text='JSON object {"key": "value"}')
    run_id = serializers.CharField(
        required=False, max_length=200, help_text="the experiment run that produced it"
    )
    git_commit = serializers.CharField(
        required=False, max_length=64, help_text="commit of the training code (7-64 hex)"
    )
    source_url = serializers.CharField(
        required=False, max_length=2000, help_text="http(s) link to the code or the run"
    )
    training_dataset = JSONStringField(
        required=False, help_text='JSON object {"uri": "...", "sha256": "<64 hex>"}'
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
    tags = TagsField(read_only=True)
    aliases = serializers.SerializerMethodField()
    training_dataset = TrainingDatasetField(source="*", read_only=True)

    class Meta:
        model = ModelVersion
        fields = [
            "name",
            "version",
            "stage",
            "aliases",
            "tags",
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
            "run_id",
            "git_commit",
            "source_url",
            "training_dataset",
            "created_at",
            "updated_at",
            "created_by",
        ]

    def get_aliases(self, obj: ModelVersion) -> list[str]:
        """The names of the aliases pointing to this version, sorted (never `latest`)."""
        return sorted(a.alias for a in obj.aliases.all())


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


class ModelVersionUpdateInput(serializers.Serializer):
    tags = TagsChangesField(required=False, help_text="merged: a null value deletes the key")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = set(self.initial_data) - {"tags"}
        if unknown:
            raise serializers.ValidationError(
                {
                    f: [
                        "read-only here: stages change through /transition, lineage and the "
                        "artifact are set at upload"
                    ]
                    for f in sorted(unknown)
                }
            )
        return attrs


class AliasRemovalOutput(serializers.Serializer):
    alias = serializers.CharField()
    version = AsciiIntegerField()


class ModelVersionTransitionOutput(ModelVersionOutput):
    aliases_removed = AliasRemovalOutput(
        many=True,
        read_only=True,
        help_text="aliases removed because their version was archived by this change",
    )

    class Meta(ModelVersionOutput.Meta):
        fields = [*ModelVersionOutput.Meta.fields, "aliases_removed"]


class ModelVersionDeletedOutput(serializers.Serializer):
    name = serializers.CharField()
    version = AsciiIntegerField()
    deleted = serializers.BooleanField()
    aliases_removed = AliasRemovalOutput(
        many=True, help_text="aliases that pointed to the version, removed with it"
    )


class ModelListQueryInput(serializers.Serializer):
    """The filters of GET /api/v1/models/ (query parameters)."""

    tag = serializers.ListField(
        child=serializers.CharField(max_length=5200),
        required=False,
        help_text="key or key:value (split at the first colon); repeat to require several",
    )
    search = serializers.CharField(
        max_length=200, required=False, help_text="substring of the name or description"
    )


class ModelVersionListQueryInput(serializers.Serializer):
    """The filters of GET /api/v1/models/{name}/versions/ (query parameters)."""

    tag = serializers.ListField(
        child=serializers.CharField(max_length=5200),
        required=False,
        help_text="key or key:value (split at the first colon); repeat to require several",
    )
    stage = serializers.ChoiceField(choices=Stage.choices, required=False)
    alias = serializers.CharField(
        max_length=64, required=False, help_text="the version it points to (latest allowed)"
    )
    run_id = serializers.CharField(max_length=200, required=False)


class AliasOutput(serializers.ModelSerializer):
    version = AsciiIntegerField(source="version.version")
    updated_by = serializers.CharField(
        source="updated_by_name", help_text="the user or job that last moved it"
    )

    class Meta:
        model = ModelAlias
        fields = ["alias", "version", "updated_at", "updated_by"]


class AliasInput(KnownFieldsMixin, serializers.Serializer):
    version = AsciiIntegerField(min_value=1, help_text="the version number to point to")
    comment = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class AliasDeleteInput(serializers.Serializer):  # the query string: ?format= and others pass
    comment = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class TransitionInput(KnownFieldsMixin, serializers.Serializer):
    stage = serializers.ChoiceField(choices=Stage.choices)
    comment = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)
    archive_previous = serializers.BooleanField(required=False, default=True)


class RollbackInput(KnownFieldsMixin, serializers.Serializer):
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
