"""Failed admin logins are throttled per (address, username) and per address, in the cache.

A small form instead of django-axes: axes' authentication backend refuses `authenticate()`
calls without a request, which breaks the test client's `login()` and any script using it.
"""

from __future__ import annotations

import hashlib
import logging

from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.cache import cache
from django.core.exceptions import ValidationError

from config.throttling import client_address

logger = logging.getLogger("mlregistry.security")

# One address may try several accounts, but not indefinitely.
_ADDRESS_FACTOR = 4


def _keys(address: str, username: str) -> tuple[str, str]:
    user_hash = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
    return f"admin-login:{address}:{user_hash}", f"admin-login:{address}"


class ThrottledAdminLoginForm(AdminAuthenticationForm):
    error_messages = {
        **AdminAuthenticationForm.error_messages,
        "throttled": "Too many failed login attempts. Try again in %(minutes)d minutes.",
    }

    def clean(self):
        limit = settings.ADMIN_LOGIN_FAILURE_LIMIT
        address = client_address(self.request) if self.request is not None else "unknown"
        pair_key, address_key = _keys(address, self.cleaned_data.get("username") or "")
        try:
            counts = cache.get_many([pair_key, address_key])
        except Exception:
            # Admins must still get in when the cache is down; the password check still runs.
            logger.warning("admin login throttle unavailable", exc_info=True)
            return super().clean()
        if (
            counts.get(pair_key, 0) >= limit
            or counts.get(address_key, 0) >= limit * _ADDRESS_FACTOR
        ):
            logger.warning("admin login refused: too many failures from %s", address)
            raise ValidationError(
                self.error_messages["throttled"],
                code="throttled",
                params={"minutes": max(1, settings.ADMIN_LOGIN_LOCKOUT_SECONDS // 60)},
            )
        try:
            cleaned = super().clean()
        except ValidationError:
            self._record_failure(pair_key, address_key)
            raise
        cache.delete(pair_key)
        return cleaned

    def _record_failure(self, *keys: str) -> None:
        timeout = settings.ADMIN_LOGIN_LOCKOUT_SECONDS
        for key in keys:
            try:
                cache.add(key, 0, timeout)
                cache.incr(key)
            except ValueError:
                cache.set(key, 1, timeout)
            except Exception:
                logger.warning("admin login failure not counted", exc_info=True)
                return
