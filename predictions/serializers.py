"""Input and output serializers of the predictions API (the predict body itself is checked
against the version's schema in predictions.validation, not here)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from config.fields import AsciiIntegerField, KnownFieldsMixin


class SplitItem(serializers.Serializer):
    version = AsciiIntegerField(min_value=1, max_value=2**31 - 1)  # the column's range
    weight = AsciiIntegerField(min_value=0, max_value=100)


class TrafficSplitInput(KnownFieldsMixin, serializers.Serializer):
    splits = SplitItem(many=True, allow_empty=False)


class TrafficSplitOutput(serializers.Serializer):
    version = AsciiIntegerField(source="version.version")
    stage = serializers.CharField(source="version.stage")
    weight = AsciiIntegerField()


class TrafficSplitListOutput(serializers.Serializer):
    model = serializers.CharField()
    splits = TrafficSplitOutput(many=True)


# The predict body and answers are decoded and rendered without DRF serializers (body.py,
# services.prediction_serve): the classes below only document them, as named components.
SCALAR_SCHEMA = {
    "anyOf": [{"type": "number"}, {"type": "integer"}, {"type": "string"}, {"type": "boolean"}]
}


@extend_schema_field({**SCALAR_SCHEMA, "description": "a class label, or a regressor's number"})
class PredictionValueField(serializers.JSONField):
    pass


@extend_schema_field(
    {
        "type": "object",
        "description": "one row: feature name -> value, as the version's input_schema says",
        "additionalProperties": {**SCALAR_SCHEMA, "nullable": True},
    }
)
class FeatureRowField(serializers.JSONField):
    pass


class PredictSingle(serializers.Serializer):
    features = FeatureRowField()
    client_id = serializers.CharField(
        required=False, help_text="sticky A/B routing key (the X-Client-Id header wins)"
    )


class PredictBatch(serializers.Serializer):
    instances = serializers.ListField(
        child=FeatureRowField(),
        min_length=1,
        help_text="rows, at most PREDICTION_MAX_BATCH_ROWS (413 beyond)",
    )
    client_id = serializers.CharField(
        required=False, help_text="sticky A/B routing key (the X-Client-Id header wins)"
    )


class PredictionItem(serializers.Serializer):
    """One row's answer."""

    prediction = PredictionValueField()
    confidence = serializers.FloatField(
        allow_null=True, help_text="highest class probability; null without predict_proba"
    )
    probabilities = serializers.DictField(
        child=serializers.FloatField(),
        allow_null=True,
        required=False,
        help_text="class label -> probability; null for a classifier without predict_proba, "
        "absent for a regressor",
    )


class _Served(serializers.Serializer):
    model = serializers.CharField()
    model_version = AsciiIntegerField()
    stage = serializers.CharField()
    alias = serializers.CharField(
        required=False, help_text="the alias the request named (alias predict routes only)"
    )
    cached = serializers.BooleanField()
    request_id = serializers.CharField(help_text="feedback goes to /predictions/{request_id}")
    timestamp = serializers.DateTimeField()


class PredictResponse(PredictionItem, _Served):
    """The answer to a single-row request (`features`)."""


class BatchPredictResponse(_Served):
    """The answer to a batch (`instances`): one item per row, in order."""

    predictions = PredictionItem(many=True)


class FeedbackOutput(serializers.Serializer):
    request_id = serializers.CharField()
    rows = AsciiIntegerField(help_text="prediction-log rows that received the outcome")


class FeedbackInput(serializers.Serializer):
    actual = PredictionValueField(help_text="the true label (classification) or value")
    row_index = AsciiIntegerField(min_value=0, required=False, allow_null=True)
