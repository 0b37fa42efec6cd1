"""API rate limits: one counter per (scope, client, time window), kept in the shared cache.

Scopes: "predict" (predict and feedback routes), "write" (any other unsafe method) and "read";
a view may name its own with a `throttle_scope` attribute. Authenticated callers are counted per
user, anonymous ones per client address (proxy-aware through NUM_PROXIES, never a raw
X-Forwarded-For) against the scope's "_anon" rate. Requests whose bearer token is refused are
counted per address on every route ("refused_token"), by the token authentication classes.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from typing import NamedTuple

from django.core.cache import cache
from drf_spectacular.contrib.knox_auth_token import KnoxTokenScheme
from knox.auth import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed, Throttled
from rest_framework.permissions import SAFE_METHODS
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

from config.cache_outage import cache_available, cache_failed
from config.readahead import (
    ORDER_THROTTLE,
    ReadAheadPlan,
    readahead_count,
    readahead_register,
)

logger = logging.getLogger(__name__)

_PREDICT_ROUTE = re.compile(r"(^|/)(predict|feedback)(/|$)")
_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def request_scope(request, view) -> str:
    """The throttle scope of a request: the view's `throttle_scope`, else from path and method."""
    scope = getattr(view, "throttle_scope", None)
    if scope:
        return scope
    if _PREDICT_ROUTE.search(request.path):
        return "predict"
    return "read" if request.method in SAFE_METHODS else "write"


@functools.lru_cache(maxsize=64)  # rates come from settings: a handful of strings
def parse_rate(rate: str) -> tuple[int, int]:
    """ "100/min" -> (100, 60); the period is read from its first letter, as DRF does."""
    count, _, period = rate.partition("/")
    return int(count), _PERIODS[period.strip()[0].lower()]


def client_address(request) -> str:
    """The caller's address, honouring exactly NUM_PROXIES trusted proxies."""
    return BaseThrottle().get_ident(request) or "unknown"


class WindowCounter(NamedTuple):
    """One fixed-window counter: its cache `key`, the `limit` of requests in a window of
    `duration` seconds, and when that window ends (epoch seconds)."""

    key: str
    limit: int
    duration: int
    window_end: float


class ScopeRateThrottle(BaseThrottle):
    """Fixed-window counter per scope and client.

    A fixed window costs one atomic increment per request (a sliding log would store every
    timestamp), at the price of allowing up to twice the rate across a window boundary.
    """

    def __init__(self) -> None:
        self._wait: float | None = None

    def allow_request(self, request, view) -> bool:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            counter = self.counter(request, view, ident=f"user:{user.pk}")
        else:
            counter = self.counter(request, view, ident=f"addr:{client_address(request)}")
        if counter is None:
            return True
        count = self._count_guarded(counter.key, counter.duration)
        if count is None:
            # Without the cache there is no shared count; keep serving rather than refuse all.
            return True
        if count > counter.limit:
            self._wait = counter.window_end - time.time()
            return False
        return True

    @staticmethod
    def counter(request, view, *, ident: str) -> WindowCounter | None:
        """The counter of this request for the caller `ident` ("user:<pk>" or
        "addr:<address>"), or None when its scope is unthrottled.

        The read-ahead asks before authentication, with the user the token is known to belong
        to, so the increment travels in the same cache round trip as the token lookup.
        """
        # The read-ahead asks before authentication and the throttle asks again after it:
        # the answer for the same caller is kept on the view (one instance per request).
        kept = getattr(view, "_throttle_counter", None)
        if kept is not None and kept[0] == ident:
            return kept[1]
        scope = request_scope(request, view)
        rate_name = scope if ident.startswith("user:") else f"{scope}_anon"
        rate = api_settings.DEFAULT_THROTTLE_RATES.get(rate_name)
        counter = None
        if rate:
            limit, duration = parse_rate(rate)
            window = int(time.time() // duration)
            key = f"throttle:{rate_name}:{ident}:{duration}:{window}"
            counter = WindowCounter(key, limit, duration, float((window + 1) * duration))
        if view is not None:
            view._throttle_counter = (ident, counter)
        return counter

    @staticmethod
    def _count(key: str, duration: int) -> int:
        ahead = readahead_count(key)
        if ahead is not None:
            return ahead
        # Increment first: in steady state that is one cache round trip; only the first request
        # of a window also creates the counter (and a lost creation race increments instead).
        try:
            return cache.incr(key)
        except ValueError:
            if cache.add(key, 1, duration + 1):
                return 1
            return cache.incr(key)

    @classmethod
    def _count_guarded(cls, key: str, duration: int) -> int | None:
        """The counter after this request, or None while the cache is failing (skipped for the
        retry period and logged once per period, config/cache_outage.py)."""
        ahead = readahead_count(key)
        if ahead is not None:
            return ahead
        if not cache_available():
            return None
        try:
            return cls._count(key, duration)
        except Exception as exc:
            cache_failed("throttle", exc)
            return None

    @staticmethod
    def refund_ahead(key: str) -> None:
        """Gives back the increment made ahead (if it was made) for a request whose token was
        then refused: a request not authenticated as that user must not count against it."""
        if readahead_count(key) is None:
            return
        try:
            cache.decr(key)
        except Exception:  # the window is over (no counter left) or the cache is down
            logger.debug("throttle count not refunded", exc_info=True)

    def wait(self) -> float | None:
        return self._wait


def _read_ahead(plan: ReadAheadPlan) -> None:
    """The caller's counter travels with the token lookup when its user is known ahead."""
    if plan.user_pk is None:
        return
    counter = ScopeRateThrottle.counter(plan.request, plan.view, ident=f"user:{plan.user_pk}")
    if counter is not None:
        plan.increment(counter.key, counter.duration)


def _refund_ahead(plan: ReadAheadPlan) -> None:
    for key, _ in plan.increments:
        if key.startswith("throttle:"):
            ScopeRateThrottle.refund_ahead(key)


readahead_register("throttle", _read_ahead, order=ORDER_THROTTLE, on_refused=_refund_ahead)


class RefusedTokenThrottled(Throttled):
    """429 for a client address that sent too many refused bearer tokens (token guessing)."""

    default_detail = "Too many requests with a refused token from this address."


def _refused_token_counter(request) -> WindowCounter | None:
    rate = api_settings.DEFAULT_THROTTLE_RATES.get("refused_token")
    if not rate:
        return None
    limit, duration = parse_rate(rate)
    window = int(time.time() // duration)
    key = f"throttle:refused_token:addr:{client_address(request)}:{duration}:{window}"
    return WindowCounter(key, limit, duration, float((window + 1) * duration))


def refused_token_check(request) -> None:
    """429 when this address already used up its budget of refused tokens, before a token is
    looked up in the database (a guess then costs no query)."""
    counter = _refused_token_counter(request)
    if counter is None:
        return
    if not cache_available():
        return  # without the cache there is no shared count; the database check still runs
    try:
        count = cache.get(counter.key) or 0
    except Exception as exc:
        cache_failed("throttle", exc)
        return
    if count >= counter.limit:
        raise RefusedTokenThrottled(wait=counter.window_end - time.time())


def refused_token_count(request) -> None:
    """Counts a refused token against its address; 429 (instead of 401) past the budget."""
    counter = _refused_token_counter(request)
    if counter is None:
        return
    count = ScopeRateThrottle._count_guarded(counter.key, counter.duration)
    if count is not None and count > counter.limit:
        raise RefusedTokenThrottled(wait=counter.window_end - time.time())


class RefusedTokenThrottleMixin:
    """For a token authentication class: refused tokens are counted per client address, and an
    address past THROTTLE_REFUSED_TOKEN_RATE gets 429 without its token being looked up.

    DRF's throttles run after authentication, so they never see a request whose token was
    refused; without this, guessing tokens would be unthrottled.
    """

    def authenticate(self, request):
        self._request = request
        try:
            return super().authenticate(request)
        except AuthenticationFailed:
            refused_token_count(request)
            raise

    def authenticate_credentials(self, token):
        request = getattr(self, "_request", None)
        if request is not None:
            refused_token_check(request)
        if isinstance(token, bytes) and not token.isascii():
            # knox decodes it as UTF-8 and would raise (a 500) on other bytes; a token is
            # ASCII (hex), so any other byte is a wrong token: 401, counted as refused.
            raise AuthenticationFailed("Invalid token.")
        return super().authenticate_credentials(token)


class ThrottledTokenAuthentication(RefusedTokenThrottleMixin, TokenAuthentication):
    """knox's bearer token authentication with refused tokens throttled per address."""


class ThrottledTokenScheme(KnoxTokenScheme):
    """Documents ThrottledTokenAuthentication: knox's bearer token, as before."""

    target_class = "config.throttling.ThrottledTokenAuthentication"
