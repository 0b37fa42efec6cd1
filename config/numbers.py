"""Numbers that came in as JSON, which carries integers of any length."""

from __future__ import annotations

import math
from typing import Any


def finite_number(value: Any) -> bool:
    """True for an int or a float (not a bool) that is finite and within float range.

    math.isfinite and float() raise OverflowError for an integer past 1.8e308, which JSON
    allows and Python's json module parses; such a number is not finite for any use here."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
