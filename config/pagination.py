"""The API's page numbers."""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import NotFound
from rest_framework.pagination import PageNumberPagination


class AsciiPageNumberPagination(PageNumberPagination):
    """DRF's PageNumberPagination, reading `?page=` in ASCII digits only: Django's Paginator
    calls int(), which reads any script's digits (an Arabic-Indic two is page 2), where a
    path's and a body's integers are ASCII (config.fields.AsciiIntegerField). Another page is
    DRF's own 404 "Invalid page."."""

    def get_page_number(self, request: Any, paginator: Any) -> Any:
        number = super().get_page_number(request, paginator)
        if isinstance(number, str) and not number.isascii():
            raise NotFound(self.invalid_page_message.format(page_number=number, message=""))
        return number
