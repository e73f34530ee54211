"""The gateway: one neutral entry point, ``Gateway.handle(Request) -> Response``, for every runtime."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from core.auth.authenticator import Authenticator, require
from core.auth.tokens import TokenService
from core.cache import ResponseCache
from core.clock import SystemClock, new_id
from core.domain import Principal
from core.errors import APIError, InvalidRequest, PayloadTooLarge, Unauthorized
from core.generation import GenerationService
from core.http import Request, Response
from core.limits import LimitEnforcer
from core.metering import Meter
from core.observability import LOGGER_NAME, NullMetrics, log_event
from core.ports import BackendResolver, Clock, Metrics, Store, TokenCounter
from core.registry import ModelRegistry
from core.router import Route, Router
from core.routing import ModelRouter
from core.settings import GatewaySettings
from core.tenants import TenantDirectory

M = TypeVar("M", bound=BaseModel)
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Pydantic names the member of a union it tried (``prompt.str``, ``stop.list[str][0]``); callers sent ``prompt``.
_UNION_MEMBER = re.compile(r"^(str|int|float|bool|bytes|none)$|\[")


@dataclass
class RequestContext:
    request: Request
    route: Route
    principal: Principal | None
    gateway: Gateway

    @property
    def caller(self) -> Principal:
        if self.principal is None:
            raise Unauthorized("this route needs credentials")
        return self.principal

    def body(self, model: type[M]) -> M:
        return parse_body(model, self.request.body)


def parse_body(model: type[M], raw: bytes) -> M:
    if not raw.strip():
        raise InvalidRequest("the request body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        if err["type"] == "json_invalid":
            raise InvalidRequest(f"malformed JSON: {err['msg']}", code="invalid_json") from None
        loc = "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"] if not _UNION_MEMBER.search(str(p))
        ).lstrip(".")
        message = err["msg"].removeprefix("Value error, ")
        raise InvalidRequest(f"{loc}: {message}" if loc else message, param=loc or None, code="invalid_value") from None


class Gateway:
    """Wires the services together; handlers reach them through ``RequestContext.gateway``."""

    def __init__(
        self,
        store: Store,
        backends: BackendResolver,
        *,
        settings: GatewaySettings | None = None,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        token_counter: TokenCounter | None = None,
        router: Router | None = None,
    ) -> None:
        self.settings = settings or GatewaySettings()
        self.clock = clock or SystemClock()
        self.metrics = metrics or NullMetrics()
        self.store = store
        self.log = logging.getLogger(LOGGER_NAME)
        self.tokens = TokenService(store, self.clock, self.settings.tokens)
        self.auth = Authenticator(store, self.tokens, self.clock, self.settings.key_cache_ttl_s)
        self.tenants = TenantDirectory(store, self.clock, self.settings.tenant_cache_ttl_s)
        self.registry = ModelRegistry(store, self.clock, self.settings.model_cache_ttl_s)
        self.limits = LimitEnforcer(store, self.clock, self.metrics)
        self.cache = ResponseCache(
            store,
            self.clock,
            self.metrics,
            self.settings.cache_ttl_s,
            self.settings.cache_l1_size,
            enabled=self.settings.cache_enabled,
        )
        self.model_router = ModelRouter(self.registry, backends, self.metrics)
        self.meter = Meter(store, self.clock, self.metrics)
        self.generation = GenerationService(
            tenants=self.tenants,
            key_lookup=self.auth.key_record,
            limits=self.limits,
            cache=self.cache,
            router=self.model_router,
            meter=self.meter,
            counter=token_counter,
        )
        if router is None:
            from core.api import build_router

            router = build_router()
        self.router = router

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        request.request_id = new_id("req")
        caller_id = request.headers.get("x-request-id", "")
        correlation_id = caller_id if _SANE_REQUEST_ID.match(caller_id) else request.request_id
        route: Route | None = None
        principal: Principal | None = None
        try:
            route = self.router.match(request)
            if len(request.body) > self.settings.max_body_bytes:
                raise PayloadTooLarge(f"request body above the limit of {self.settings.max_body_bytes} bytes")
            if not route.public:
                principal = self.auth.authenticate(request)
                if route.scope is not None:
                    require(principal, route.scope)
            response = await route.handler(RequestContext(request, route, principal, self))
        except APIError as exc:
            response = Response.error(exc)
            if exc.status == 401:
                self.metrics.incr("auth_failures_total", code=str(exc.code))
        except Exception:
            self.log.exception("unhandled error", extra={"fields": {"request_id": correlation_id}})
            response = Response.error(APIError("internal error; the request id identifies it in the logs"))
        response.headers["x-request-id"] = correlation_id
        self._observe(request, route, principal, response, started, correlation_id)
        return response

    def _observe(
        self,
        request: Request,
        route: Route | None,
        principal: Principal | None,
        response: Response,
        started: float,
        correlation_id: str,
    ) -> None:
        elapsed = time.perf_counter() - started
        path = route.template if route else "unmatched"
        status = str(response.status)
        self.metrics.incr("requests_total", route=path, status=status)
        self.metrics.observe("request_latency_seconds", elapsed, route=path)
        log_event(
            self.log,
            "request",
            request_id=correlation_id,
            internal_id=request.request_id,
            method=request.method,
            route=path,
            status=response.status,
            latency_ms=round(elapsed * 1000, 3),
            tenant_id=principal.tenant_id if principal else None,
            key_id=principal.key_id if principal else None,
            streamed=response.stream is not None,
        )
