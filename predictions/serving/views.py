"""The DRF side of the seam: a predict view's read-ahead, authentication and body."""

from __future__ import annotations

from typing import Any

from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import APIException, AuthenticationFailed
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.views import APIView

from config.errors import DomainError
from config.parsers import content_type_check
from config.readahead import ReadAheadPlan, readahead_clear, readahead_plan, readahead_refused
from config.throttling import RefusedTokenThrottled
from predictions.auth import CachedTokenAuthentication
from predictions.body import PredictBody, read_body
from predictions.rendering import JSONFirstContentNegotiation, ORJSONParser, ORJSONRenderer
from predictions.serving.core import Served, serve
from predictions.serving.readahead import prefetch
from predictions.serving.routing import AliasTarget, ProductionTarget, Target, VersionTarget


class ServingView(APIView):
    """Base of every predict view: parse (`decode`), serve (`served`), render (the subclass).

    Before authentication, one cache round trip fetches what every registered owner needs
    (config/readahead.py: token, access policy, throttle counter, routing entry, result);
    nothing fetched is served unless authentication, the access check and routing then agree.

    Subclasses may override `target` (the URL's target; default: `alias` names an alias,
    `version` pins a version, else production or the split), `planned_target` (the target
    read ahead for, or None when finding it needs more than the URL) and `decode` (the body
    as rows; default: the native `{"features"}` / `{"instances"}` JSON)."""

    authentication_classes = [CachedTokenAuthentication, SessionAuthentication]
    permission_classes = [IsAuthenticated]
    parser_classes = [ORJSONParser]
    renderer_classes = [ORJSONRenderer]
    content_negotiation_class = JSONFirstContentNegotiation
    throttle_scope = "predict"  # what config.throttling.request_scope finds from the path

    def target(self, **kwargs: Any) -> Target:
        name = kwargs["name"]
        if kwargs.get("alias") is not None:
            return AliasTarget(name, kwargs["alias"])
        version = kwargs.get("version")
        return ProductionTarget(name) if version is None else VersionTarget(name, version)

    def planned_target(self, kwargs: dict[str, Any]) -> Target | None:
        return self.target(**kwargs) if "name" in kwargs else None

    def decode(self, request: Request, raw: bytes) -> PredictBody:
        """The request body as rows; raise DomainError / APIException for a bad body."""
        content_type_check(request.content_type, accepted=("application/json",))
        return PredictBody(raw)

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        plan = ReadAheadPlan(
            request=request,
            view=self,
            target=self.planned_target(kwargs),
            body=lambda: self._body_ahead(request),
        )
        prefetch(readahead_plan(plan))
        try:
            super().initial(request, *args, **kwargs)
        except (AuthenticationFailed, RefusedTokenThrottled):
            readahead_refused(plan)
            raise

    def finalize_response(self, request, response, *args, **kwargs):
        readahead_clear()
        return super().finalize_response(request, response, *args, **kwargs)

    def body(self, request: Request) -> PredictBody:
        """The decoded body (decoded once; a decoding error raised where it is needed)."""
        body = getattr(self, "_predict_body", None)
        if body is None:
            if getattr(self, "_body_error", None) is not None:
                raise self._body_error
            body = self._predict_body = self.decode(request, read_body(request.stream))
        return body

    def _body_ahead(self, request: Request) -> PredictBody | None:
        # Read before authentication for the result-key guess: any error waits for serving (a
        # bad token is a 401 whatever the body).
        try:
            return self.body(request)
        except (APIException, DomainError) as exc:
            self._body_error = exc
            return None

    def served(self, request: Request, target: Target) -> Served:
        """This request answered by `target` (predictions.serving.serve)."""
        return serve(
            user=request.user,
            target=target,
            body=self.body(request),
            request_id=request.request_id,
            client_id=request.headers.get("X-Client-Id") or None,
        )
