"""Tags of models and versions: string keys to string values, merged by PATCH (a null value
deletes the key). Rules as MLflow's tags, with a key charset that is safe in a query string."""

from __future__ import annotations

import re
from typing import Any

from config.errors import ValidationFailed

TAG_KEY_PATTERN = re.compile(r"[A-Za-z0-9_.:/-]{1,128}")
TAG_VALUE_MAX_LENGTH = 5000
# No rule in the issue; bounds the JSON a single row holds (and an audit diff repeats).
TAGS_MAX_COUNT = 200
# `?tag=` filters per request: each is a clause of the query, and SQLite refuses an
# expression nested past 1,000 levels (about 300 such clauses), which would read as an outage.
TAG_FILTERS_MAX = 50


def _key_error(key: Any) -> str | None:
    if not isinstance(key, str) or not TAG_KEY_PATTERN.fullmatch(key):
        return "key must match ^[A-Za-z0-9_.:/-]{1,128}$"
    return None


def tags_changes_validate(
    changes: Any, *, field: str = "tags", allow_delete: bool = True
) -> dict[str, str | None]:
    """`changes` ({key: value}, value a string of at most 5,000 characters, or null to delete
    when `allow_delete`) checked; ValidationFailed (400) naming each bad key under
    `<field>.<key>`. A list of strings (the former model tags) reads as keys with empty values."""
    if isinstance(changes, list) and all(isinstance(k, str) for k in changes):
        changes = dict.fromkeys(changes, "")
    if not isinstance(changes, dict):
        raise ValidationFailed(
            f"{field} must be a JSON object of string keys to string values.",
            fields={field: ["must be an object {key: value}"]},
        )
    errors: dict[str, list[str]] = {}
    for key, value in changes.items():
        where = f"{field}.{str(key)[:128]}"
        why = _key_error(key)
        if why:
            errors[where] = [why]
        elif value is None:
            if not allow_delete:
                errors[where] = ["value must be a string"]
        elif not isinstance(value, str):
            errors[where] = ["value must be a string (null deletes the tag)"]
        elif len(value) > TAG_VALUE_MAX_LENGTH:
            errors[where] = [f"value longer than {TAG_VALUE_MAX_LENGTH} characters"]
    if errors:
        raise ValidationFailed(f"Invalid {field}.", fields=errors)
    return changes


def tags_merge(current: dict[str, str], changes: dict[str, str | None]) -> dict[str, str]:
    """`current` with `changes` applied (null deletes), keys sorted; ValidationFailed (400)
    when the result would hold more than TAGS_MAX_COUNT tags."""
    if isinstance(current, list):  # a row restored from before tags were key -> value
        current = dict.fromkeys(map(str, current), "")
    merged = dict(current or {})
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    if len(merged) > TAGS_MAX_COUNT:
        raise ValidationFailed(
            f"At most {TAGS_MAX_COUNT} tags; this change would leave {len(merged)}.",
            fields={"tags": [f"at most {TAGS_MAX_COUNT} tags"]},
        )
    return dict(sorted(merged.items()))


def tag_filter_parse(value: str) -> tuple[str, str | None]:
    """A `?tag=` filter: `key` (has the tag) or `key:value` (split at the first colon, so a
    value may hold colons). ValidationFailed (400, field `tag`) for a malformed key."""
    key, colon, tag_value = value.partition(":")
    if _key_error(key):
        raise ValidationFailed(
            f"Invalid tag filter {value[:80]!r}: use key or key:value.",
            fields={"tag": ["key must match ^[A-Za-z0-9_.:/-]{1,128}$ (key or key:value)"]},
        )
    return key, (tag_value if colon else None)
