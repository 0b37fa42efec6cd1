"""The Open Inference Protocol (KServe V2, REST) on the native serving path.

Spec: https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/ and its
binary tensor data extension (Triton's `binary_tensor_data`). Served under /v2/ as the protocol
defines, next to /api/v1.

Inputs are either one tensor per feature (named as the schema's features, shape [N] or [N, 1])
or one 2-D tensor [N, n_features] in schema order; as JSON `data` (flat or nested, row-major) or
as binary data after the JSON header (`Inference-Header-Content-Length`, each input's
`parameters.binary_data_size`). Outputs: `predict` (one label or value per row) and, for
classifiers with probabilities, `predict_proba` [N, n_classes] in the order of the model's
classes; a request's `outputs` selects them and asks for binary data per output
(`parameters.binary_data`) or for all (`parameters.binary_data_output`). Errors are the
protocol's `{"error": "..."}` with the native endpoint's status.

Infer requests go through the serving seam (predictions.serving) as native ones do; the metadata
and readiness views use the same authentication, access policy, routing entry and targets.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import orjson
from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.errors import ConflictError, ValidationFailed
from config.parsers import content_type_check
from config.renderers import BinaryRenderer
from mlregistry.access import model_access_check
from predictions.auth import CachedTokenAuthentication
from predictions.body import parse_json
from predictions.loader import model_cache
from predictions.protocols.frame import FrameBody, ProtocolPredictView
from predictions.rendering import ORJSONRenderer
from predictions.serving import (
    ProductionTarget,
    RoutingEntry,
    Served,
    Target,
    VersionInfo,
    VersionTarget,
    routing_entry_get,
)

PLATFORM = "scikit-learn"
HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_MEDIA_TYPE = "application/octet-stream"

# Little-endian, as the binary tensor data extension defines.
_NUMPY_TYPES = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
# JSON data numpy accepts for each datatype family (kind codes): a bool is no number here.
_JSON_KINDS = {"b": "b", "u": "iu", "i": "iu", "f": "fiu"}
# The schema's feature types as V2 datatypes (metadata); other numeric datatypes are accepted
# where validation accepts their values (an INT32 tensor for a float feature, say).
FEATURE_DATATYPES = {"float": "FP64", "integer": "INT64", "boolean": "BOOL", "string": "BYTES"}
OUTPUTS = ("predict", "predict_proba")


def _bad(message: str, field: str = "inputs") -> ValidationFailed:
    return ValidationFailed(message, fields={field: [message]})


# --- requests -----------------------------------------------------------------------------


# numpy refuses shapes whose byte size would not fit its index type even when a dimension is
# 0 (no data to hold): dimensions are bounded so that such a shape is a 400, not numpy's
# ValueError. Tensors here are rows x features: 2**31 - 1 is far past any batch limit.
_MAX_DIMENSION = 2**31 - 1
_MAX_DIMENSIONS = 8


def _shape(tensor: dict[str, Any], where: str) -> list[int]:
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or len(shape) > _MAX_DIMENSIONS
        or not all(type(d) is int and 0 <= d <= _MAX_DIMENSION for d in shape)
    ):
        raise _bad(
            f"{where}.shape must be a list of 1 to {_MAX_DIMENSIONS} integers from 0 to "
            f"{_MAX_DIMENSION}.",
            where,
        )
    return shape


def _from_binary(chunk: bytes, datatype: str, count: int, where: str) -> np.ndarray:
    if datatype == "BYTES":
        values: list[str] = []
        offset = 0
        try:
            while offset < len(chunk):
                (length,) = struct.unpack_from("<I", chunk, offset)
                offset += 4
                if offset + length > len(chunk):
                    raise struct.error("element past the end")
                values.append(chunk[offset : offset + length].decode())
                offset += length
        except (struct.error, UnicodeDecodeError) as exc:
            raise _bad(f"{where}: malformed BYTES data ({exc}).", where) from None
        if len(values) != count:
            raise _bad(f"{where}: {len(values)} BYTES elements for a shape of {count}.", where)
        return np.array(values, dtype=object)
    dtype = _NUMPY_TYPES[datatype]
    if len(chunk) != count * dtype.itemsize:
        raise _bad(
            f"{where}: {len(chunk)} bytes of binary data; its shape and {datatype} need "
            f"{count * dtype.itemsize}.",
            where,
        )
    if datatype == "BOOL":
        return np.frombuffer(chunk, dtype=np.uint8) != 0
    return np.frombuffer(chunk, dtype=dtype)


def _from_json_data(data: Any, datatype: str, count: int, where: str) -> np.ndarray:
    if not isinstance(data, list):
        raise _bad(f"{where}.data must be a list (or binary_data_size given).", where)
    try:
        array = np.asarray(data)
    except ValueError:
        raise _bad(
            f"{where}.data is ragged: nested lists must have equal lengths.", where
        ) from None
    if array.size != count:
        raise _bad(f"{where}: {array.size} values for a shape holding {count}.", where)
    array = array.reshape(-1)
    if datatype == "BYTES":
        if count and array.dtype.kind != "U":
            raise _bad(f"{where}.data must be strings for BYTES.", where)
        return array.astype(object)
    dtype = _NUMPY_TYPES[datatype]
    if count and array.dtype.kind not in _JSON_KINDS[dtype.kind]:
        raise _bad(f"{where}.data do not match the datatype {datatype}.", where)
    if count and dtype.kind in "iu" and array.dtype.kind in "iu":
        # astype would wrap an out-of-range value round (300 as INT8 is 44): another number.
        limits = np.iinfo(dtype)
        if array.min() < limits.min or array.max() > limits.max:
            raise _bad(
                f"{where}.data hold values outside {datatype}'s range "
                f"[{limits.min}, {limits.max}].",
                where,
            )
    with np.errstate(over="ignore"):
        converted = array.astype(dtype)
    # A finite number past FP16's or FP32's range would become infinity.
    if (
        count
        and dtype.kind == "f"
        and array.dtype.kind in "iuf"
        and not np.isfinite(converted).all()
        and np.isfinite(array.astype(np.float64)).all()
    ):
        raise _bad(f"{where}.data hold values outside {datatype}'s range.", where)
    return converted


def _tensors(header: dict[str, Any], binary: bytes) -> list[tuple[str, np.ndarray]]:
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad("`inputs` must be a non-empty list of tensors.")
    offset = 0
    tensors: list[tuple[str, np.ndarray]] = []
    for index, tensor in enumerate(inputs):
        where = f"inputs[{index}]"
        if not isinstance(tensor, dict):
            raise _bad(f"{where} must be an object.", where)
        name, datatype = tensor.get("name"), tensor.get("datatype")
        if not isinstance(name, str) or not name:
            raise _bad(f"{where}.name must be a non-empty string.", where)
        if datatype != "BYTES" and datatype not in _NUMPY_TYPES:
            raise _bad(
                f"{where}.datatype {datatype!r} is not one of "
                f"{', '.join([*_NUMPY_TYPES, 'BYTES'])}.",
                where,
            )
        shape = _shape(tensor, where)
        count = math.prod(shape)  # Python ints: a huge shape cannot wrap around
        size = _parameters(tensor, where).get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > len(binary):
                raise _bad(f"{where}.parameters.binary_data_size is past the binary data.", where)
            array = _from_binary(binary[offset : offset + size], datatype, count, where)
            offset += size
        else:
            array = _from_json_data(tensor.get("data"), datatype, count, where)
        try:
            tensors.append((name, array.reshape(shape)))
        except ValueError as exc:
            raise _bad(f"{where}.shape {shape} cannot hold its data: {exc}", where) from None
    if offset != len(binary):
        raise _bad(f"{len(binary) - offset} bytes of binary data belong to no input.")
    return tensors


def _frame(raw: bytes, tensors: list[tuple[str, np.ndarray]]) -> FrameBody:
    """One 2-D tensor: columns in schema order (named later); else one tensor per feature."""
    if len(tensors) == 1 and tensors[0][1].ndim == 2:
        return FrameBody(raw, table=tensors[0][1])
    names = [name for name, _ in tensors]
    if len(set(names)) != len(names):
        raise _bad("Input names must be unique (one tensor per feature).")
    rows = {array.shape[0] for _, array in tensors}
    for name, array in tensors:
        if array.ndim > 2 or (array.ndim == 2 and array.shape[1] != 1):
            raise _bad(
                f"Input {name!r} has shape {list(array.shape)}: one tensor per feature is "
                "[N] or [N, 1]; several features go in one [N, n_features] tensor.",
                name,
            )
    if len(rows) != 1:
        raise _bad("Every input must hold the same number of rows (the first dimension).")
    columns = [array.reshape(-1) for _, array in tensors]
    if all(c.dtype.kind in "fiu" for c in columns):
        table = np.column_stack(columns)
    else:
        table = np.empty((len(columns[0]), len(columns)), dtype=object)
        for index, column in enumerate(columns):
            table[:, index] = column.tolist()
    return FrameBody(raw, table=table, columns=names)


def _requested_outputs(header: dict[str, Any]) -> list[tuple[str, bool]] | None:
    """[(output name, binary?)] the request asks for, or None for all outputs."""
    outputs = header.get("outputs")
    if outputs is None:
        return None
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise _bad("`outputs` must be a list of objects with a `name`.", "outputs")
    return [
        (o["name"], bool(_parameters(o, f"outputs[{i}]").get("binary_data")))
        for i, o in enumerate(outputs)
    ]


def _parameters(node: dict[str, Any], where: str) -> dict[str, Any]:
    """A tensor's or output's `parameters`: an object, as the protocol defines it, or absent."""
    parameters = node.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise _bad(f"{where}.parameters must be an object.", f"{where}.parameters")
    return parameters


# --- answers ------------------------------------------------------------------------------


# A numpy array's kind as the V2 datatype of its values (anything else is BYTES).
_KIND_DATATYPES = {"b": "BOOL", "i": "INT64", "u": "INT64", "f": "FP64"}


def _label_datatype(values: Any) -> str:
    if isinstance(values, np.ndarray) and values.dtype.kind != "O":
        return _KIND_DATATYPES.get(values.dtype.kind, "BYTES")
    kinds = set(map(type, values))
    if kinds <= {bool}:
        return "BOOL"
    if kinds <= {int}:
        return "INT64"
    if kinds <= {int, float}:
        return "FP64"
    return "BYTES"


def _tensor_out(
    name: str, values: Any, datatype: str, shape: list[int], binary: bool
) -> tuple[dict[str, Any], bytes]:
    out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
    if not binary:
        flat = values.reshape(-1).tolist() if isinstance(values, np.ndarray) else list(values)
        out["data"] = flat if datatype != "BYTES" else [str(v) for v in flat]
        return out, b""
    if datatype == "BYTES":
        encoded = [str(v).encode() for v in _listed(values)]
        data = b"".join(struct.pack("<I", len(e)) + e for e in encoded)
    else:
        data = np.ascontiguousarray(values, dtype=_NUMPY_TYPES[datatype]).tobytes()
    out["parameters"] = {"binary_data_size": len(data)}
    return out, data


def _listed(values: Any) -> list[Any]:
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def _answer(
    *,
    served: Served,
    request_id: Any,
    requested: list[tuple[str, bool]] | None,
    binary_all: bool,
) -> HttpResponse:
    # The arrays the model answered, never the native answer's per-row objects: a 1,000-row
    # request encodes two arrays instead of reading back 1,000 dicts.
    probabilities = served.probabilities
    available = OUTPUTS if probabilities is not None else OUTPUTS[:1]
    if requested is None:
        requested = [(output, binary_all) for output in available]
    header: dict[str, Any] = {
        "model_name": served.model_name,
        "model_version": str(served.version.version),
    }
    if request_id is not None:
        header["id"] = request_id
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for output, binary in requested:
        binary = binary or binary_all
        if output == "predict":
            labels = served.labels
            if isinstance(labels, np.ndarray) and labels.dtype.kind == "O":
                labels = labels.tolist()  # mixed labels: typed per value, as JSON would
            datatype = _label_datatype(labels)
            tensor = _tensor_out(output, labels, datatype, [len(served)], binary)
        elif output == "predict_proba" and probabilities is not None:
            tensor = _tensor_out(output, probabilities, "FP64", list(probabilities.shape), binary)
        else:
            raise _bad(
                f"Unknown output {output!r}: this model has {', '.join(available)}.", "outputs"
            )
        tensors.append(tensor[0])
        chunks.append(tensor[1])
    header["outputs"] = tensors
    encoded = orjson.dumps(header)
    binary_data = b"".join(chunks)
    if not binary_data:
        return HttpResponse(encoded, content_type="application/json")
    response = HttpResponse(encoded + binary_data, content_type=BINARY_MEDIA_TYPE)
    response[HEADER_LENGTH] = str(len(encoded))
    return response


# --- versions -----------------------------------------------------------------------------


def _target(name: str, version: int | None) -> Target:
    return ProductionTarget(name) if version is None else VersionTarget(name, version)


def _routed(user: Any, name: str, version: int | None) -> tuple[RoutingEntry, list[VersionInfo]]:
    """(routing entry, the versions a request may be answered by) after the access check."""
    model_access_check(user=user, model_name=name)
    entry = routing_entry_get(name=name)
    return entry, list(_target(name, version).candidates(entry, user=user))


def _schema_names(user: Any, name: str, version: int | None) -> list[str]:
    """The feature order a 2-D input tensor is read in: the routed version's schema."""
    _, infos = _routed(user, name, version)
    if not infos:
        raise ConflictError(f"Model {name!r} has no production version: promote one.")
    orders = {info.feature_order for info in infos}
    if len(orders) > 1:
        raise _bad(
            f"The versions in {name!r}'s traffic split have different features, so one 2-D "
            "tensor cannot be read in one order: send one tensor per feature."
        )
    return list(orders.pop())


class _V2Errors:
    """The protocol's error body, {"error": "message"}, with the native status and headers."""

    renderer_classes = [ORJSONRenderer]

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)  # type: ignore[misc]
        # Errors are JSON whatever the client accepts.
        request = self.request  # type: ignore[attr-defined]
        request.accepted_renderer, request.accepted_media_type = (
            ORJSONRenderer(),
            "application/json",
        )
        error = response.data.get("error") if isinstance(response.data, dict) else None
        if isinstance(error, dict):
            message = error.get("message", "")
            details = "; ".join(
                f"{field}: {' '.join(map(str, msgs))}"
                for field, msgs in list((error.get("fields") or {}).items())[:5]
                if " ".join(map(str, msgs)) not in message
            )
            response.data = {"error": f"{message} ({details})" if details else message}
        return response


# JSON and the binary extension's type; text/plain is what tritonclient's HTTP client sends, and
# application/x-www-form-urlencoded what `curl -d` sends unless told otherwise (Triton's own
# examples rely on it, as Triton reads the body whatever its type says).
_INFER_MEDIA_TYPES = (
    "application/json",
    "application/octet-stream",
    "text/plain",
    "application/x-www-form-urlencoded",
)


class _InferBase(_V2Errors, ProtocolPredictView):
    # Octet-stream too: what a client asking for binary outputs may accept (the answer is
    # built by this module; errors stay JSON, _V2Errors).
    renderer_classes = [ORJSONRenderer, BinaryRenderer]

    def decode(self, request: Request, raw: bytes) -> FrameBody:
        """The request's tensors: a JSON body, or the binary extension's JSON header and raw
        tensors, declared as one of _INFER_MEDIA_TYPES or not at all; another type, or a
        charset other than UTF-8, is a 415."""
        declared = request.META.get("CONTENT_TYPE")
        if declared:
            content_type_check(declared, accepted=_INFER_MEDIA_TYPES)
        length = request.headers.get(HEADER_LENGTH)
        if length is not None:
            if not (length.isascii() and length.isdigit()) or int(length) > len(raw):
                raise _bad(f"{HEADER_LENGTH} must be the JSON header's size in bytes.")
            raw, binary = raw[: int(length)], raw[int(length) :]
        else:
            binary = b""
        header = parse_json(raw)
        if not isinstance(header, dict):
            raise _bad("The inference request must be a JSON object.")
        if "id" in header and not isinstance(header["id"], str):
            # The protocol's inference request defines `id` as a string, echoed as it came.
            raise _bad("id must be a string.", field="id")
        self._header = header
        return _frame(raw, _tensors(header, binary))

    def _infer(self, request: Request, name: str, version: int | None) -> HttpResponse:
        body = self.body(request)
        header = self._header
        requested = _requested_outputs(header)
        parameters = header.get("parameters")
        binary_all = isinstance(parameters, dict) and bool(parameters.get("binary_data_output"))
        if isinstance(body, FrameBody) and body.columns is None:
            body.names = lambda: _schema_names(request.user, name, version)
        served = self.served(request, self.target(name=name, version=version))
        return _answer(
            served=served,
            request_id=header.get("id"),
            requested=requested,
            binary_all=binary_all,
        )


# Not in the OpenAPI document: the protocol has its own specification, and its binary framing
# (a JSON header and raw tensors in one body) has no OpenAPI description.
_V2_SCHEMA = extend_schema(exclude=True)


class InferView(_InferBase):
    @_V2_SCHEMA
    def post(self, request: Request, name: str) -> HttpResponse:
        return self._infer(request, name, None)


class InferVersionView(_InferBase):
    @_V2_SCHEMA
    def post(self, request: Request, name: str, version: int) -> HttpResponse:
        return self._infer(request, name, version)


class _ModelView(_V2Errors, APIView):
    authentication_classes = [CachedTokenAuthentication, SessionAuthentication]
    permission_classes = [IsAuthenticated]


class ModelMetadataView(_ModelView):
    """Name, versions, platform, inputs (one per feature) and outputs of the version a request
    without a version is answered by (production, else the split's first, else the newest)."""

    @_V2_SCHEMA
    def get(self, request: Request, name: str, version: int | None = None) -> Response:
        entry, infos = _routed(request.user, name, version)
        if not infos:
            newest = max(entry.by_number, default=None)
            if newest is None:
                raise ConflictError(f"Model {name!r} has no version that can serve.")
            infos = [entry.version_numbered(newest)]
        info = infos[0]
        loaded = model_cache.get(info, model_name=name)
        outputs = [{"name": "predict", "datatype": _classes_datatype(loaded), "shape": [-1]}]
        if loaded.has_proba:
            width = len(loaded.class_labels or [])
            outputs.append({"name": "predict_proba", "datatype": "FP64", "shape": [-1, width]})
        return Response(
            {
                "name": name,
                "versions": [str(n) for n in sorted(entry.by_number)],
                "platform": PLATFORM,
                "inputs": [
                    {
                        "name": feature["name"],
                        "datatype": FEATURE_DATATYPES[feature.get("type", "float")],
                        "shape": [-1],
                    }
                    for feature in info.schema
                ],
                "outputs": outputs,
                "parameters": {"version": str(info.version), "stage": info.stage},
            }
        )


def _classes_datatype(loaded: Any) -> str:
    classes = getattr(loaded.estimator, "classes_", None)
    if classes is None:
        return "FP64"
    return _KIND_DATATYPES.get(classes.dtype.kind, "BYTES")


class ModelReadyView(_ModelView):
    """200 when requests to this model (or version) can be answered (its versions load), else
    the native error: 404, 409 without a production version, 503 (clients read non-200 as not
    ready)."""

    @_V2_SCHEMA
    def get(self, request: Request, name: str, version: int | None = None) -> Response:
        _, infos = _routed(request.user, name, version)
        if not infos:
            raise ConflictError(f"Model {name!r} has no production version: promote one.")
        for info in infos:
            model_cache.get(info, model_name=name)
        return Response({"name": name, "ready": True})


class ServerMetadataView(_V2Errors, APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @_V2_SCHEMA
    def get(self, request: Request) -> Response:
        return Response(
            {"name": "model-registry", "version": "1", "extensions": ["binary_tensor_data"]}
        )
