"""MLflow's scoring protocol (`mlflow models serve`, POST /invocations) on the native serving path.

Accepted, as MLflow's scoring server accepts them (mlflow/pyfunc/scoring_server/__init__.py):
`application/json` (charset UTF-8 only, no other media-type parameter) holding exactly one of
`dataframe_split` ({"columns", "data", optional "index"}), `dataframe_records` (a list of
objects), `instances` or `inputs` (a list of objects, or an object of column lists); a `params`
key is accepted and ignored (a scikit-learn model takes none); and `text/csv` with a header
row. The answer is `{"predictions": [...]}`, one value per row as the model's `predict` gives
it, as MLflow answers for a scikit-learn model. MLflow answers 400 for every bad input and 415
for another media type; so do these views, and the native statuses (401, 403, 404, 409, 413,
422, 429, 503) where MLflow has no such case. Error bodies are the API's shape, with MLflow's
`error_code` and `message` keys added for clients that read those.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from django.utils.http import parse_header_parameters
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.exceptions import ParseError, UnsupportedMediaType
from rest_framework.request import Request
from rest_framework.response import Response

from config.errors import ValidationFailed
from config.schema import error_responses
from predictions.body import parse_json
from predictions.protocols.frame import FrameBody, ProtocolPredictView

SUPPORTED_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
REQUIRED_INPUT_FORMAT = (
    "The input must be a JSON dictionary with exactly one of the input fields "
    "{'dataframe_split', 'dataframe_records', 'instances', 'inputs'}"
)

# MLflow's error codes (mlflow.protos.databricks_pb2) for the statuses these views answer.
_ERROR_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "RESOURCE_DOES_NOT_EXIST",
    405: "ENDPOINT_NOT_FOUND",
    406: "BAD_REQUEST",
    408: "TEMPORARILY_UNAVAILABLE",
    409: "INVALID_STATE",
    413: "REQUEST_LIMIT_EXCEEDED",
    415: "BAD_REQUEST",
    422: "INVALID_PARAMETER_VALUE",
    429: "REQUEST_LIMIT_EXCEEDED",
    503: "TEMPORARILY_UNAVAILABLE",
}


def _bad(message: str, field: str) -> ValidationFailed:
    return ValidationFailed(message, fields={field: [message]})


def _from_json(raw: bytes) -> FrameBody:
    payload = parse_json(raw)
    if not isinstance(payload, dict):
        kind = "a list" if isinstance(payload, list) else f"a JSON {type(payload).__name__}"
        raise _bad(f"{REQUIRED_INPUT_FORMAT}. Received {kind}.", "non_field_errors")
    present = [key for key in SUPPORTED_FORMATS if key in payload]
    if len(present) != 1:
        raise _bad(
            f"{REQUIRED_INPUT_FORMAT}. Received dictionary with input fields: {list(payload)}.",
            "non_field_errors",
        )
    key = present[0]
    value = payload[key]
    if key == "dataframe_split":
        return _split(raw, value)
    if key == "dataframe_records":
        if not isinstance(value, list):
            raise _bad("dataframe_records must be a list of objects (orient='records').", key)
        return FrameBody(raw, records=value)
    if isinstance(value, list):
        if value and not all(isinstance(row, dict) for row in value):
            raise _bad(
                f"{key} must be a list of objects (feature name -> value) or an object of "
                "column lists: a list of unnamed values cannot be matched to the model's "
                "named features.",
                key,
            )
        return FrameBody(raw, records=value)
    if isinstance(value, dict):
        columns = list(value)
        lists = [v for v in value.values() if isinstance(v, list)]
        if not lists:  # one row given as an object of scalars
            return FrameBody(raw, records=[value])
        if len(lists) != len(columns) or len({len(v) for v in lists}) != 1:
            raise _bad(f"{key}: every column must be a list, all of the same length.", key)
        return FrameBody(
            raw, table=[list(row) for row in zip(*lists, strict=True)], columns=columns
        )
    raise _bad(f"{key} must be a list of objects or an object of column lists.", key)


def _split(raw: bytes, value: Any) -> FrameBody:
    field = "dataframe_split"
    if not isinstance(value, dict) or not isinstance(value.get("data"), list):
        raise _bad("dataframe_split must be an object with `columns` and `data` lists.", field)
    columns, data = value.get("columns"), value["data"]
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise _bad("dataframe_split.columns must be a list of feature names.", f"{field}.columns")
    if len(set(columns)) != len(columns):
        raise _bad("dataframe_split.columns names a feature twice.", f"{field}.columns")
    for index, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(columns):
            raise _bad(
                f"dataframe_split.data[{index}] must be a list of {len(columns)} values "
                "(one per column).",
                f"{field}.data[{index}]",
            )
    return FrameBody(raw, table=data, columns=columns)


# pandas builds a column per header field and costs ~0.1 ms each, more as they grow (10,000
# columns took 1.3 s, 300,000 a minute): a header of far more features than any model takes
# is refused before pandas reads it.
CSV_MAX_COLUMNS = 4096


def _from_csv(raw: bytes) -> FrameBody:
    import pandas as pd

    # The first record as the csv module reads it (a quoted name may hold a comma or a line
    # break); linear in its length.
    try:
        records = csv.reader(io.StringIO(raw.decode("utf-8", "replace")))
        # pandas skips blank lines before the header (skip_blank_lines), so this does too.
        first = next((r for r in records if any(f.strip() for f in r)), [])
    except csv.Error as exc:  # a header field past the csv module's 128 KiB
        raise _bad(f"The CSV header cannot be read: {exc}.", "columns") from None
    if len(first) > CSV_MAX_COLUMNS:
        raise _bad(
            f"The CSV header has more than {CSV_MAX_COLUMNS} columns; no model here takes that "
            "many features.",
            "columns",
        )
    try:
        frame = pd.read_csv(io.BytesIO(raw), encoding="utf-8")
    except Exception as exc:  # pandas raises many kinds for a malformed file
        raise ParseError(
            "Failed to parse input as a Pandas DataFrame. Ensure that the input is a valid "
            f"CSV-formatted Pandas DataFrame produced using the `pandas.DataFrame.to_csv()` "
            f"method. Error: '{exc}'"
        ) from None
    table = [
        [None if isinstance(v, float) and math.isnan(v) else v for v in row]
        for row in frame.to_dict(orient="split")["data"]
    ]
    return FrameBody(raw, table=table, columns=[str(c) for c in frame.columns])


_REQUEST_BODY = {
    "application/json": {
        "type": "object",
        "description": "Exactly one of dataframe_split, dataframe_records, instances, inputs.",
        "properties": {
            "dataframe_split": {
                "type": "object",
                "properties": {
                    "columns": {"type": "array", "items": {"type": "string"}},
                    "data": {"type": "array", "items": {"type": "array", "items": {}}},
                    "index": {"type": "array", "items": {}},
                },
            },
            "dataframe_records": {"type": "array", "items": {"type": "object"}},
            "instances": {"type": "array", "items": {"type": "object"}},
            "inputs": {
                "oneOf": [{"type": "array", "items": {"type": "object"}}, {"type": "object"}]
            },
            "params": {"type": "object", "description": "accepted and ignored"},
        },
    },
    # A raw body (format: binary, as OpenAPI 3.0 describes one): generated clients then pass
    # it as a file's bytes.
    "text/csv": {
        "type": "string",
        "format": "binary",
        "description": "CSV with a header row of feature names",
    },
}
_RESPONSE = OpenApiResponse(
    {
        "type": "object",
        "properties": {"predictions": {"type": "array", "items": {}}},
        "required": ["predictions"],
    },
    description="One prediction per row, in order (the model's predict output).",
)
_CLIENT_HEADER = OpenApiParameter(
    "X-Client-Id", str, OpenApiParameter.HEADER, description="sticky A/B routing key"
)


class _InvocationsBase(ProtocolPredictView):
    def decode(self, request: Request, raw: bytes) -> FrameBody:
        media_type, params = parse_header_parameters(request.content_type or "")
        charset = params.pop("charset", "utf-8").lower()
        if charset != "utf-8" or params:
            raise UnsupportedMediaType(
                request.content_type,
                detail=(
                    "The scoring server only supports UTF-8 and no media-type parameter "
                    f"other than charset; got {request.content_type!r}."
                ),
            )
        if media_type == "application/json":
            return _from_json(raw)
        if media_type == "text/csv":
            return _from_csv(raw)
        raise UnsupportedMediaType(
            request.content_type,
            detail="This predictor only supports the following content types: "
            f"['text/csv', 'application/json']. Got {request.content_type!r}.",
        )

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        error = response.data.get("error") if isinstance(response.data, dict) else None
        if isinstance(error, dict):
            response.data["error_code"] = _ERROR_CODES.get(response.status_code, "BAD_REQUEST")
            response.data["message"] = error.get("message", "")
        return response

    def _invoke(self, request: Request, **target: Any) -> Response:
        served = self.served(request, self.target(**target))
        return Response({"predictions": served.predictions()})


class InvocationsView(_InvocationsBase):
    @extend_schema(
        operation_id="invoke",
        tags=["mlflow"],
        request=_REQUEST_BODY,
        responses={200: _RESPONSE, **error_responses(400, 409, 422)},
        parameters=[_CLIENT_HEADER],
        summary="MLflow scoring protocol: predict with the production version (or the split)",
    )
    def post(self, request: Request, name: str) -> Response:
        return self._invoke(request, name=name)


class InvocationsVersionView(_InvocationsBase):
    @extend_schema(
        operation_id="invoke_version",
        tags=["mlflow"],
        request=_REQUEST_BODY,
        responses={200: _RESPONSE, **error_responses(400, 409, 422)},
        summary="MLflow scoring protocol: predict with one version (archived: staff only)",
    )
    def post(self, request: Request, name: str, version: int) -> Response:
        return self._invoke(request, name=name, version=version)


class InvocationsAliasView(_InvocationsBase):
    @extend_schema(
        operation_id="invoke_alias",
        tags=["mlflow"],
        request=_REQUEST_BODY,
        responses={200: _RESPONSE, **error_responses(400, 422)},
        summary="MLflow scoring protocol: predict with the version an alias points to",
        description="As MLflow's models:/name@alias. `latest` is the highest version that is "
        "not archived; 404 when the model has no such alias.",
    )
    def post(self, request: Request, name: str, alias: str) -> Response:
        return self._invoke(request, name=name, alias=alias)
