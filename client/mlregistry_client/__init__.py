"""Python client of the Model Registry: log, promote, serve and load scikit-learn models."""

from mlregistry_client.errors import (
    AuthenticationError,
    ChecksumMismatch,
    Conflict,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RangeNotSatisfiable,
    RateLimited,
    RegistryError,
    Unavailable,
    ValidationError,
)
from mlregistry_client.models import (
    BatchPrediction,
    ModelAlias,
    ModelVersion,
    Prediction,
    RegisteredModel,
    TrafficSplit,
)
from mlregistry_client.registry import DEFAULT_TRUSTED_TYPES, Registry, infer_input_schema

__all__ = [
    "DEFAULT_TRUSTED_TYPES",
    "AuthenticationError",
    "BatchPrediction",
    "ChecksumMismatch",
    "Conflict",
    "ModelAlias",
    "ModelVersion",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "Prediction",
    "RangeNotSatisfiable",
    "RateLimited",
    "RegisteredModel",
    "Registry",
    "RegistryError",
    "TrafficSplit",
    "Unavailable",
    "ValidationError",
    "infer_input_schema",
]
