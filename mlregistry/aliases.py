"""The rules of alias names, as MLflow's registry has them (an alias is a lower-case name;
`latest` and `v<number>` are reserved because they already mean a version)."""

from __future__ import annotations

import re

from config.errors import ValidationFailed

ALIAS_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,63}")
# `latest` resolves, read-only, to the highest version that is not archived.
LATEST = "latest"
# `v3` reads as "version 3" in MLflow's URIs (models:/name/3 vs models:/name@v3).
_VERSION_LIKE = re.compile(r"v[0-9]+")


def alias_is_reserved(alias: str) -> bool:
    return alias == LATEST or bool(_VERSION_LIKE.fullmatch(alias))


def alias_validate(alias: str) -> str:
    """`alias` when a user may set it; ValidationFailed (400, field `alias`) otherwise:
    not `^[a-z][a-z0-9_-]{0,63}$`, or reserved (`latest`, `v<number>`)."""
    if not isinstance(alias, str) or not ALIAS_PATTERN.fullmatch(alias):
        raise ValidationFailed(
            f"Invalid alias {str(alias)[:80]!r}: an alias is a lower-case letter followed by up "
            "to 63 lower-case letters, digits, '_' or '-'.",
            fields={"alias": ["must match ^[a-z][a-z0-9_-]{0,63}$"]},
        )
    if alias_is_reserved(alias):
        raise ValidationFailed(
            f"The alias {alias!r} is reserved: 'latest' always means the highest version that "
            "is not archived, and 'v<number>' reads as a version number.",
            fields={"alias": ["reserved (latest, v<number>)"]},
        )
    return alias
