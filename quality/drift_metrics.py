"""Prometheus gauges of the latest drift results, read from the database at scrape time.

The worker that computes a report is not the process Prometheus scrapes, so in-process gauges
would never show its numbers; a collector asks the database what the newest reports say.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from django.db import DatabaseError
from prometheus_client.core import REGISTRY, GaugeMetricFamily, Metric

logger = logging.getLogger(__name__)

P_VALUE = "mlregistry_drift_p_value"
P_VALUE_ADJUSTED = "mlregistry_drift_p_value_adjusted"
EFFECT_SIZE = "mlregistry_drift_effect_size"
DETECTED = "mlregistry_drift_detected"


def _families() -> tuple[GaugeMetricFamily, ...]:
    return (
        GaugeMetricFamily(
            P_VALUE,
            "raw p-value of the newest drift test per production model and feature",
            labels=["model", "feature"],
        ),
        GaugeMetricFamily(
            P_VALUE_ADJUSTED,
            "p-value of the newest drift test adjusted for testing all the model's features "
            "(Benjamini-Hochberg); drift needs it under the threshold",
            labels=["model", "feature"],
        ),
        GaugeMetricFamily(
            EFFECT_SIZE,
            "effect size of the newest drift test: the KS statistic for numeric features, "
            "the population stability index for categorical ones",
            labels=["model", "feature", "measure"],
        ),
        GaugeMetricFamily(
            DETECTED,
            "1 when the newest drift test flagged the feature (adjusted p-value under the "
            "threshold and effect size at least its floor), else 0",
            labels=["model", "feature"],
        ),
    )


class DriftCollector:
    def describe(self) -> Iterator[Metric]:
        # Describing without collecting keeps registration free of database queries.
        yield from _families()

    def collect(self) -> Iterator[Metric]:
        from quality.drift import latest_drift_reports

        p_values, adjusted, effect_sizes, detected = _families()
        try:
            reports = latest_drift_reports()
        except DatabaseError:
            logger.warning("drift metrics unavailable: database error")
            reports = []
        for report in reports:
            for entry in report.features:
                if entry.get("p_value") is None:
                    continue
                labels = [report.model.name, entry["feature"]]
                p_values.add_metric(labels, entry["p_value"])
                # Reports written before the adjustment existed have neither number.
                if entry.get("p_value_adjusted") is not None:
                    adjusted.add_metric(labels, entry["p_value_adjusted"])
                if entry.get("effect_size") is not None:
                    measure = entry.get("effect_size_measure", "")
                    effect_sizes.add_metric([*labels, measure], entry["effect_size"])
                detected.add_metric(labels, 1.0 if entry.get("drift") else 0.0)
        yield p_values
        yield adjusted
        yield effect_sizes
        yield detected


_collector: DriftCollector | None = None


def drift_collector_register() -> None:
    """Registers the collector once per process (URL loading calls this)."""
    global _collector
    if _collector is None:
        _collector = DriftCollector()
        REGISTRY.register(_collector)
