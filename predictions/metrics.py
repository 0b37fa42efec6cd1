"""Prometheus metrics of the serving path, exported at /metrics by django-prometheus.

Names are a contract with the alert rules and the dashboard: change them only together.
With several gunicorn workers set PROMETHEUS_MULTIPROC_DIR (an empty folder per start) and
run gunicorn with `-c deploy/gunicorn.conf.py`, so /metrics adds up every worker's values.
"""

from prometheus_client import Counter, Histogram

from config.http_metrics import labelled  # noqa: F401 - the serving path's updates use it

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

PREDICTIONS = Counter(
    "mlregistry_predictions_total",
    "Rows predicted, by model, version and whether the answer came from the result cache.",
    ["model", "version", "cached"],
)
PREDICTION_LATENCY = Histogram(
    "mlregistry_prediction_latency_seconds",
    "Time to answer one predict request (routing, validation, cache, model), by model.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
PREDICTION_CONFIDENCE = Histogram(
    "mlregistry_prediction_confidence",
    "Highest class probability of classified rows (16 sampled per batch), by model and version.",
    ["model", "version"],
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
)
CACHE_REQUESTS = Counter(
    "mlregistry_cache_requests_total",
    "Result-cache lookups by result (hit, miss) and cache failures (error, any operation).",
    ["result"],
)
MODEL_LOADS = Counter(
    "mlregistry_model_loads_total",
    "Estimator loads into a process's model cache, by model, version and result (ok, error).",
    ["model", "version", "result"],
)
MODEL_LOAD_SECONDS = Histogram(
    "mlregistry_model_load_seconds",
    "Time to read, verify and deserialise one model artifact.",
    ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
MODEL_OUTPUT_INVALID = Counter(
    "mlregistry_model_output_invalid_total",
    "Rows whose model output was NaN or infinite (refused with 422, never served).",
    ["model", "version"],
)
VALIDATION_FAILURES = Counter(
    "mlregistry_validation_failures_total",
    "Predict requests refused with 400 (bad JSON or features failing the input schema).",
    ["model"],
)
PREDICTION_LOG_DROPPED = Counter(
    "mlregistry_prediction_log_dropped_total",
    "Prediction-log rows dropped because the in-process buffer was full or a flush failed.",
)
PREDICTION_LOG_WRITTEN = Counter(
    "mlregistry_prediction_log_rows_total",
    "Prediction-log rows bulk-inserted into the database.",
)
