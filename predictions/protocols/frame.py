"""A protocol request decoded into rows, served by the native predict path.

`FrameBody` is a `PredictBody` whose rows come from a protocol's decoding instead of the native
JSON: `services.prediction_serve` reads it exactly as it reads a native body. Plainly numeric
rows of a required-float schema go in as one float64 matrix (`typed`); anything else becomes
native `{"features": ...}` / `{"instances": [...]}` rows (`parsed`), which validation checks
field by field, so errors name the same fields and statuses as on the native endpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np
from django.conf import settings
from rest_framework.request import Request

from config.errors import ValidationFailed
from predictions import services
from predictions.body import PredictBody, RowDecoder, TypedRows, read_body
from predictions.views import _PredictBase

_NUMBER_TYPES = frozenset({float, int})
_NUMERIC_KINDS = frozenset("fiu")


class FrameBody(PredictBody):
    """Rows of one request: `records` (a list of feature objects), or a `table` (a 2-D numpy
    array, or a list of row lists) whose columns are `columns`. `columns=None` means the
    schema's order, resolved by `names` (called only when the rows must be validated one by
    one; the typed path takes the order from the routed version's own decoder)."""

    def __init__(
        self,
        raw: bytes,
        *,
        records: list[Any] | None = None,
        table: np.ndarray | list[list[Any]] | None = None,
        columns: Sequence[str] | None = None,
        names: Callable[[], Sequence[str]] | None = None,
    ) -> None:
        super().__init__(raw)
        self.records = records
        self.table = table
        self.columns = tuple(columns) if columns is not None else None
        self.names = names
        self._payload: dict[str, Any] | None = None
        self.n_rows = len(records) if records is not None else len(table)  # type: ignore[arg-type]

    # -- the general path ------------------------------------------------------------------

    def parsed(self) -> Any:
        if self._payload is None:
            if self.records is not None:
                rows = self.records
            else:
                columns = self.columns
                if columns is None:
                    if self.names is None:
                        raise ValidationFailed("The input's columns are not named.")
                    columns = tuple(self.names())
                    width = self.table.shape[1] if self.n_rows else len(columns)
                    if width != len(columns):
                        raise ValidationFailed(
                            f"The input has {width} columns; the model's schema has "
                            f"{len(columns)} features ({', '.join(columns)}).",
                            fields={"inputs": [f"expected {len(columns)} columns, not {width}"]},
                        )
                table = self.table.tolist() if isinstance(self.table, np.ndarray) else self.table
                rows = [dict(zip(columns, row, strict=True)) for row in table]
            self._payload = {"features": rows[0]} if self.n_rows == 1 else {"instances": rows}
        return self._payload

    # -- the typed path --------------------------------------------------------------------

    def typed(self, decoder: RowDecoder | None) -> TypedRows | None:
        if decoder is None or not self.n_rows:
            return None
        if self._typed is None or self._typed[0] is not decoder:
            matrix = None
            if self.n_rows <= settings.PREDICTION_MAX_BATCH_ROWS:
                matrix = self._matrix(decoder.names)
            rows = TypedRows(matrix, self.n_rows > 1, None) if matrix is not None else None
            self._typed = (decoder, rows)
        return self._typed[1]

    def _matrix(self, names: tuple[str, ...]) -> np.ndarray | None:
        """The rows as float64 in the order of `names` when every value is a plain number and
        the columns are exactly `names`, else None (the general path decides)."""
        width = len(names)
        if self.records is not None:
            getter = itemgetter(*names)
            try:
                if any(len(row) != width for row in self.records):
                    return None
                picked = list(map(getter, self.records))
            except (KeyError, TypeError):
                return None
            flat = chain.from_iterable(picked) if width > 1 else picked
            if not _NUMBER_TYPES.issuperset(map(type, flat)):
                return None
            try:
                return np.array(picked, dtype=np.float64).reshape(self.n_rows, width)
            except OverflowError:  # an integer beyond float range: validation names it
                return None
        table = self.table
        if self.columns is None or self.columns == names:
            order = None
        elif len(self.columns) == width and set(self.columns) == set(names):
            order = [self.columns.index(n) for n in names]
        else:
            return None
        if isinstance(table, np.ndarray):
            if table.ndim != 2 or table.shape[1] != width or table.dtype.kind not in _NUMERIC_KINDS:
                return None
            matrix = table.astype(np.float64, copy=False)
        else:
            if any(len(row) != width for row in table):
                return None
            if not _NUMBER_TYPES.issuperset(map(type, chain.from_iterable(table))):
                return None
            try:
                matrix = np.array(table, dtype=np.float64).reshape(self.n_rows, width)
            except OverflowError:  # an integer beyond float range: validation names it
                return None
        return matrix[:, order] if order is not None else matrix


class ProtocolPredictView(_PredictBase):
    """The native predict view (its read-ahead, authentication, access check, throttle and
    serving) with a protocol's body decoding; subclasses encode `served()`'s rows."""

    def decode(self, request: Request, raw: bytes) -> FrameBody:
        """The request body as rows; raise DomainError / APIException for a bad body."""
        raise NotImplementedError

    def _body(self, request: Request) -> PredictBody:
        body = getattr(self, "_predict_body", None)
        if body is None:
            if getattr(self, "_body_error", None) is not None:
                raise self._body_error
            body = self._predict_body = self.decode(request, read_body(request.stream))
        return body

    def served(
        self, request: Request, name: str, version: int | None, alias: str | None = None
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(the native answer, its rows as the native batch lists them) for this request."""
        result = services.prediction_serve(
            user=request.user,
            model_name=name,
            body=self._body(request),
            request_id=request.request_id,
            version_number=version,
            client_id=request.headers.get("X-Client-Id") or None,
            alias=alias,
        )
        return result, (result.get("predictions", [result]))
