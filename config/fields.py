"""Serializer fields the API's serializers share."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers


class AsciiIntegerField(serializers.IntegerField):
    """DRF's IntegerField, reading ASCII digits only. DRF calls Python's int(), which reads
    any Unicode decimal digits (an Arabic-Indic or a full-width three is 3): a path holding
    them is a 404 (Django's converters match [0-9]), so the same number in a body or a form
    field must not name a version either. Refused as DRF refuses any other non-integer."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, str) and not data.isascii():
            self.fail("invalid")
        return super().to_internal_value(data)


class AsciiFloatField(serializers.FloatField):
    """DRF's FloatField, reading ASCII only (float(), like int(), reads any Unicode digits)
    and refusing a number beyond float range as invalid: JSON carries integers of any length,
    float() raises OverflowError for one past 1.8e308, and DRF catches only ValueError."""

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, str) and not data.isascii():
            self.fail("invalid")
        try:
            return super().to_internal_value(data)
        except OverflowError:
            self.fail("invalid")


class KnownFieldsMixin:
    """For a request body's serializer: a field it does not have is a 400 naming it, since a
    misspelt optional field would otherwise change nothing and answer 2xx. A subclass may give
    `unknown_field_reasons` ({field: why}) for names a client is likely to try."""

    unknown_field_reasons: dict[str, str] = {}

    def validate(self, attrs: Any) -> Any:
        attrs = super().validate(attrs)  # type: ignore[misc]
        data = getattr(self, "initial_data", None)
        fields = self.fields  # type: ignore[attr-defined]
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(fields))
            if unknown:
                listed = ", ".join(fields)
                raise serializers.ValidationError(
                    {
                        name: [
                            self.unknown_field_reasons.get(
                                name, f"not a field of this request ({listed})"
                            )
                        ]
                        for name in unknown
                    }
                )
        return attrs
