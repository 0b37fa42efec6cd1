"""Which registered models an authenticated caller may use.

The predict path calls model_access_check before anything else (including the result cache),
so a restricted client gets a 404 for a model outside its list even when a result is cached.
"""

from __future__ import annotations

from typing import Any


def model_access_check(*, user: Any, model_name: str) -> None:
    """Raises NotFoundError when `user` may not use `model_name`. Must not query the database
    on every call (it is on the hot path): cache what it needs."""
    return None
