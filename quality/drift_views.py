"""GET /api/v1/models/{name}/drift: a model's drift reports, newest first."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from config.fields import AsciiIntegerField
from mlregistry.access import model_access_check
from mlregistry.permissions import RegistryPermission
from mlregistry.selectors import registered_model_get
from quality.drift import drift_reports_list
from quality.drift_metrics import drift_collector_register
from quality.models import DriftReport

# /metrics is served by the process that loads these URLs.
drift_collector_register()


class FeatureDriftOutput(serializers.Serializer):
    """One feature's test. Reports written before p-values were adjusted have null
    `p_value_adjusted` and effect-size fields."""

    feature = serializers.CharField()
    test = serializers.ChoiceField(choices=["ks", "chi2"])
    statistic = serializers.FloatField(allow_null=True, help_text="KS D or chi-squared")
    p_value = serializers.FloatField(allow_null=True, help_text="raw p-value of this test")
    p_value_adjusted = serializers.FloatField(
        allow_null=True,
        default=None,
        help_text="Benjamini-Hochberg adjusted over the report's tested features; drift needs "
        "it under the report's threshold",
    )
    effect_size_measure = serializers.ChoiceField(
        choices=["ks_statistic", "psi"], allow_null=True, default=None
    )
    effect_size = serializers.FloatField(allow_null=True, default=None)
    min_effect_size = serializers.FloatField(
        allow_null=True, default=None, help_text="drift needs effect_size at least this"
    )
    drift = serializers.BooleanField()


class DriftWindowOutput(serializers.Serializer):
    start = serializers.DateTimeField(source="window_start")
    end = serializers.DateTimeField(source="window_end")


class DriftReportOutput(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name")
    version = AsciiIntegerField(source="version.version")
    window = DriftWindowOutput(source="*")
    features = FeatureDriftOutput(many=True)

    class Meta:
        model = DriftReport
        fields = [
            "id",
            "model",
            "version",
            "status",
            "window",
            "reference_size",
            "sample_size",
            "threshold",
            "drifted_features",
            "features",
            "created_at",
        ]


class DriftVersionFilter(serializers.Serializer):
    version = AsciiIntegerField(required=False, min_value=1)


class ModelDriftListView(GenericAPIView):
    permission_classes = [RegistryPermission]
    serializer_class = DriftReportOutput

    @extend_schema(
        operation_id="list_drift_reports",
        tags=["drift"],
        parameters=[OpenApiParameter("version", int, description="only this version's reports")],
        responses=DriftReportOutput(many=True),
        summary="A model's drift reports, newest first",
    )
    def get(self, request: Request, name: str) -> Response:
        query = DriftVersionFilter(data=request.query_params)
        query.is_valid(raise_exception=True)
        model_access_check(user=request.user, model_name=name)
        model = registered_model_get(name=name)
        reports = drift_reports_list(model=model, version=query.validated_data.get("version"))
        page = self.paginate_queryset(reports)
        return self.get_paginated_response(DriftReportOutput(page, many=True).data)
