"""The gateway: one neutral entry point, ``Gateway.handle(Request) -> Response``, for every runtime."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from core import deadlines
from core.auth.access_tokens import TokenService
from core.auth.authenticator import Authenticator, require
from core.auth.revocation import Revocations
from core.budget_shards import ShardPolicy
from core.budget_slices import SlicedLimits, SlicePolicy
from core.cache import ResponseCache
from core.clock import SystemClock, new_id
from core.domain import ModelSpec, Principal
from core.errors import APIError, InvalidRequest, PayloadTooLarge, ServiceUnavailable, Unauthorized
from core.generation_service import GenerationService
from core.http import Request, Response, sane_request_id
from core.jobs import InProcessJobQueue
from core.leases import LeaseClock
from core.limits import LimitEnforcer, RequestLimits
from core.metering import Meter
from core.model_router import ModelRouter
from core.observability import LOGGER_NAME, NullMetrics, log_event
from core.offload import Offload
from core.ports import (
    BackendResolver,
    BlobStore,
    Clock,
    FineTuner,
    JobQueue,
    Metrics,
    SigningKeyStore,
    Store,
    TokenCounter,
)
from core.registry import ModelRegistry
from core.routes import Route, Router
from core.settings import GatewaySettings
from core.static_split import StaticSplit
from core.tenants import TenantDirectory

if TYPE_CHECKING:  # batches and fine-tuning are imported when first used: a cold start needs neither
    from core.batch.execute import Sleep
    from core.batch.runner import BatchRunner, RunnerSettings
    from core.fine_tuning.service import FineTuningService

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
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

    async def offload(self, fn: Callable[..., T], /, *args: Any) -> T:
        """A blocking step of the handler (store calls) run off the event loop (``core.offload``)."""
        return await self.gateway.offload.call(fn, *args)

    async def model(self, name: str, kind: str | None = None) -> ModelSpec:
        """The model called ``name`` as the caller sees it (``ModelRegistry.get``), off the loop if not cached."""
        return await self.gateway.model(name, kind, self.caller.tenant_id)


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
        blobs: BlobStore | None = None,
        jobs: JobQueue | None = None,
        batch_settings: RunnerSettings | None = None,
        fine_tuner: FineTuner | None = None,
        signing_keys: SigningKeyStore | None = None,
    ) -> None:
        self.settings = settings or GatewaySettings()
        self.clock = clock or SystemClock()
        self.metrics = metrics or NullMetrics()
        self.store = store
        self.log = logging.getLogger(LOGGER_NAME)
        self.offload = Offload(self.settings.store_threads, self.settings.store_inline_below_s)
        # Signing keys may live apart from the rest (Secrets Manager on AWS); the store keeps them otherwise.
        self.tokens = TokenService(signing_keys or store, self.clock, self.settings.tokens)
        self.tenants = TenantDirectory(store, self.clock, self.settings.tenant_cache_ttl_s)
        self.auth = Authenticator(store, self.tokens, self.clock, self.settings.key_cache_ttl_s, self.tenants)
        self.registry = ModelRegistry(store, self.clock, self.settings.model_cache_ttl_s)
        leases = LeaseClock(self.settings.max_request_s, self.settings.clock_skew_s)
        settings = self.settings
        shards = ShardPolicy(settings.counter_shards, settings.counter_item_writes_per_s, settings.counter_shards_start)
        split = StaticSplit(settings.counter_shards) if settings.counter_static_minutes else None
        enforcer = LimitEnforcer(store, self.clock, self.metrics, leases, shards, split=split)
        self.limits: RequestLimits = enforcer
        if settings.counter_slice_requests:
            slices = SlicePolicy(max_requests=settings.counter_slice_requests)
            self.limits = SlicedLimits(enforcer, store, self.clock, slices)
        self.revocations = Revocations(store, self.limits, self.clock, self.auth, self.tenants)
        self.cache = ResponseCache(
            store,
            self.clock,
            self.metrics,
            self.settings.cache_ttl_s,
            self.settings.cache_l1_size,
            enabled=self.settings.cache_enabled,
        )
        self.backends = backends
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
            offload=self.offload,
        )
        if router is None:
            from core.api import build_router

            router = build_router()
        self.router = router
        # Files and batches: their content in a bucket, their runs on a job queue (in-process by default).
        self.blobs = blobs
        self._batch_settings = batch_settings
        self.batch_sleep: Sleep = asyncio.sleep
        self.jobs: JobQueue = jobs if jobs is not None else InProcessJobQueue()
        if isinstance(self.jobs, InProcessJobQueue):
            self.jobs.bind(self.run_job)
        self._fine_tuner = fine_tuner

    @cached_property
    def fine_tuning(self) -> FineTuningService:
        """Fine-tune jobs, trained by the tuner (none: POST /v1/fine_tuning/jobs answers fine_tuning_unavailable)."""
        from core.fine_tuning.service import FineTuningService

        return FineTuningService(self.store, self.registry, self.clock, self._fine_tuner, offload=self.offload)

    @property
    def batch_settings(self) -> RunnerSettings:
        if self._batch_settings is None:
            from core.batch.runner import RunnerSettings

            self._batch_settings = RunnerSettings()
        return self._batch_settings

    @batch_settings.setter
    def batch_settings(self, settings: RunnerSettings) -> None:
        self._batch_settings = settings

    def require_blobs(self) -> BlobStore:
        if self.blobs is None:
            raise ServiceUnavailable("file storage is not configured on this deployment", code="no_blob_store")
        return self.blobs

    def batch_runner(self, blobs: BlobStore | None = None, settings: RunnerSettings | None = None) -> BatchRunner:
        """A runner of batches whose files live in ``blobs`` (the gateway's own by default)."""
        from core.batch.runner import BatchRunner

        return BatchRunner(
            self.store,
            blobs or self.require_blobs(),
            self.call_route,
            clock=self.clock,
            metrics=self.metrics,
            settings=settings or self.batch_settings,
            sleep=self.batch_sleep,
            offload=self.offload,
        )

    async def run_job(self, kind: str, tenant_id: str, job_id: str) -> None:
        """The consumer of the job queue (an in-process task here; an SQS/Pub/Sub handler in the clouds)."""
        if kind != "batch":
            raise ValueError(f"unknown job kind: {kind!r}")
        with deadlines.cleared():  # a job outlives the request that started it, and its deadline
            await self.batch_runner().run(tenant_id, job_id)

    async def stop_jobs(self) -> None:
        """At shutdown: stop the in-process jobs; each records where it stopped and resumes when run again."""
        if isinstance(self.jobs, InProcessJobQueue):
            await self.jobs.cancel_all()

    async def give_back_budget(self) -> None:
        """At shutdown (Cloud Run's SIGTERM, a worker's exit): what this instance's budget slices hold goes back
        (``core.budget_slices``), retried for a few seconds while the store throttles. A no-op without slices."""
        if not isinstance(self.limits, SlicedLimits):
            return
        for _ in range(10):
            if await self.offload.call(self.limits.close_all):
                return
            await asyncio.sleep(0.5)

    async def call_route(self, principal: Principal, request: Request) -> Response:
        """Call a route in-process as ``principal`` (a batch line): the same handler and rules as over HTTP.

        Errors are raised (``APIError``), not turned into responses, so the caller can tell them apart.
        """
        route = self.router.match(request)
        if route.scope is not None:
            require(principal, route.scope)
        return await route.handler(RequestContext(request, route, principal, self))

    def max_body_for(self, method: str, path: str, headers: Mapping[str, str] | None = None) -> int:
        """The body limit of the route a request goes to: runtimes stop reading past it (413).

        A route's larger limit (uploads) is granted only to a request whose credential is valid, so
        that nobody can make a runtime buffer 100 MB without a key.
        """
        default = self.settings.max_body_bytes
        try:
            route = self.router.match(Request(method, path))
        except APIError:
            return default
        if route.max_body_bytes is None or route.max_body_bytes <= default:
            return route.max_body_bytes or default
        try:
            self.auth.authenticate(Request(method, path, headers or {}))
        except APIError:
            return default
        return route.max_body_bytes

    async def authenticate(self, request: Request) -> Principal:
        """The request's caller: on the loop when its key and tenant records are cached, else off it."""
        if self.auth.cached(request):
            return self.auth.authenticate(request)
        return await self.offload.call(self.auth.authenticate, request)

    async def model(self, name: str, kind: str | None = None, tenant: str | None = None) -> ModelSpec:
        """``registry.get``: on the loop when the name is cached, else off it."""
        if self.registry.cached(name):
            return self.registry.get(name, kind, tenant)
        return await self.offload.call(self.registry.get, name, kind, tenant)

    def deadline_of(self, request: Request, received: float) -> float:
        """When calls to models must have ended (monotonic seconds): the earliest of ``max_request_s`` after
        ``received`` (no request holds a reservation longer: core.leases relies on it), the runtime's deadline
        less the margin to settle and answer, and the caller's ``x-textnlp-timeout``."""
        found = received + self.settings.max_request_s
        if request.deadline is not None:
            found = min(found, request.deadline - self.settings.deadline_margin_s)
        caller = deadlines.caller_timeout(request.header(deadlines.TIMEOUT_HEADER))
        return found if caller is None else min(found, received + caller)

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        received = time.monotonic()
        request.request_id = new_id("req")
        correlation_id = sane_request_id(request.headers.get("x-request-id")) or request.request_id
        route: Route | None = None
        principal: Principal | None = None
        try:
            route = self.router.match(request)
            limit = route.max_body_bytes or self.settings.max_body_bytes
            if len(request.body) > limit:
                raise PayloadTooLarge(f"request body above the limit of {limit} bytes")
            if not route.public:
                principal = await self.authenticate(request)
                if route.scope is not None:
                    require(principal, route.scope)
            with deadlines.narrowed(self.deadline_of(request, received)):
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
