"""A predict request's body, parsed no further than the request needs.

Most predict bodies are plainly valid rows of numbers. For a schema of required float features,
msgspec decodes the JSON straight into typed rows, checking every name and type in C as it
parses: for a batch of 1,000 rows that is about four times cheaper than parsing the JSON into
Python objects and then checking each value (most of a batch's time before this). Anything the
typed decoder does not accept, for whatever reason, goes the general way instead (a full JSON
parse, then validation.rows_validate naming every offending field), so errors read exactly as
before; the typed decoder only ever *accepts* what the general path would accept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
from django.conf import settings

# The API's one body reader and JSON parser (depth, NUL, size and time limits).
from config.parsers import parse_json, read_body

__all__ = ["PredictBody", "RowDecoder", "TypedRows", "parse_json", "read_body"]

_UNPARSED: Any = object()


@dataclass(frozen=True)
class TypedRows:
    """Rows the typed decoder accepted: values in schema order, not yet range-checked."""

    matrix: np.ndarray
    batch: bool
    client_id: Any


class RowDecoder:
    """msgspec decoders of `{"features": {...}}` and `{"instances": [...]}` for one schema of
    required float features (unknown features refused; other top-level keys ignored, as the
    general path ignores them)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        # Feature names need not be identifiers ("sepal length (cm)"): fields are _0, _1, ...
        # renamed to the schema's names in the JSON.
        fields = [f"_{i}" for i in range(len(names))]
        row = msgspec.defstruct(
            "Row",
            [(field, float) for field in fields],
            forbid_unknown_fields=True,
            rename=dict(zip(fields, names, strict=True)),
            gc=False,
        )
        unset = msgspec.UnsetType
        body = msgspec.defstruct(
            "Body",
            [
                ("features", row | unset, msgspec.UNSET),
                ("instances", list[row] | unset, msgspec.UNSET),
                ("client_id", Any, None),
            ],
            gc=False,
        )
        self._decoder = msgspec.json.Decoder(body)

    def decode(self, raw: bytes) -> TypedRows | None:
        if b"\\u0000" in raw:
            return None  # the general path names the field that holds the NUL
        try:
            body = self._decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            # RecursionError: an ignored key nested past msgspec's limit.
            return None
        if body.client_id is not None and not isinstance(body.client_id, str | int | float):
            return None
        if body.instances is not msgspec.UNSET and body.features is not msgspec.UNSET:
            return None  # both: the general path refuses it, naming them
        if body.instances is not msgspec.UNSET:
            rows = body.instances
            if not rows or len(rows) > settings.PREDICTION_MAX_BATCH_ROWS:
                return None  # the general path answers with the right error
            batch = True
        elif body.features is not msgspec.UNSET:
            rows, batch = [body.features], False
        else:
            return None
        astuple = msgspec.structs.astuple
        matrix = np.array([astuple(r) for r in rows], dtype=np.float64)
        return TypedRows(matrix.reshape(len(rows), len(self.names)), batch, body.client_id)


class PredictBody:
    """The raw body of one predict request, with its general parse done at most once."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._parsed: Any = _UNPARSED
        self._typed: tuple[RowDecoder, TypedRows | None] | None = None
        # (loaded model, result-cache key) when the read-ahead guessed this single row's key: in
        # range for that model (the model cache holds one per version id + sha256), and the key
        # serving would compute.
        self.guessed: tuple[Any, str] | None = None

    def parsed(self) -> Any:
        if self._parsed is _UNPARSED:
            self._parsed = parse_json(self.raw)
        return self._parsed

    def typed(self, decoder: RowDecoder | None) -> TypedRows | None:
        """The rows as `decoder` reads them, or None (no decoder, or not plainly valid)."""
        if decoder is None or not self.raw:
            return None
        if self._typed is None or self._typed[0] is not decoder:
            self._typed = (decoder, decoder.decode(self.raw))
        return self._typed[1]
