"""Input and output serializers of the predictions API (the predict body itself is checked
against the version's schema in predictions.validation, not here)."""

from __future__ import annotations

from rest_framework import serializers


class SplitItem(serializers.Serializer):
    version = serializers.IntegerField(min_value=1, max_value=2**31 - 1)  # the column's range
    weight = serializers.IntegerField(min_value=0, max_value=100)


class TrafficSplitInput(serializers.Serializer):
    splits = SplitItem(many=True, allow_empty=False)


class TrafficSplitOutput(serializers.Serializer):
    version = serializers.IntegerField(source="version.version")
    stage = serializers.CharField(source="version.stage")
    weight = serializers.IntegerField()


class TrafficSplitListOutput(serializers.Serializer):
    model = serializers.CharField()
    splits = TrafficSplitOutput(many=True)


class FeedbackOutput(serializers.Serializer):
    request_id = serializers.CharField()
    rows = serializers.IntegerField(help_text="prediction-log rows that received the outcome")


class FeedbackInput(serializers.Serializer):
    actual = serializers.JSONField()
    row_index = serializers.IntegerField(min_value=0, required=False, allow_null=True)


class PredictionOutput(serializers.Serializer):
    """Documents the single-row response (rendered from a dict, not through this class)."""

    prediction = serializers.JSONField()
    confidence = serializers.FloatField(allow_null=True)
    probabilities = serializers.DictField(child=serializers.FloatField(), required=False)
    model = serializers.CharField()
    model_version = serializers.IntegerField()
    stage = serializers.CharField()
    cached = serializers.BooleanField()
    request_id = serializers.CharField()
    timestamp = serializers.DateTimeField()
