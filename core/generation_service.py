"""The path of one generation or embedding request: reserve, cache, call, settle, meter."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from core.cache import CacheKey, ResponseCache, cache_key
from core.domain import ApiKeyRecord, ModelSpec, Principal
from core.errors import APIError, InvalidRequest, Unauthorized
from core.generation_cache import generation_json, model_key, params_dict, prompt_json
from core.generation_stream import metered
from core.inference import Embeddings, Generation, GenerationParams, Prompt, StreamEvent, TextDelta
from core.limits import RequestLimits, Reservation
from core.metering import Meter
from core.model_router import ModelRouter
from core.offload import Offload
from core.ports import TokenCounter
from core.stream_charge import StreamCharge
from core.tenants import TenantDirectory
from core.token_counts import prompt_upper_bound


@dataclass
class Completed:
    """Generations in prompt-major order (prompt 0 choice 0..n-1, prompt 1 ...)."""

    generations: list[Generation]
    model: ModelSpec
    cached: bool
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def prompt_tokens(self) -> int:
        return sum(g.prompt_tokens for g in self.generations)

    @property
    def completion_tokens(self) -> int:
        return sum(g.completion_tokens for g in self.generations)


@dataclass
class Streamed:
    headers: dict[str, str]
    events: AsyncIterator[StreamEvent]


@dataclass
class Embedded:
    embeddings: Embeddings
    cached: bool
    headers: dict[str, str]


# Key ids of principals that no API key stands behind: batches started by a bucket upload or the CLI.
SYSTEM_KEY_PREFIX = "system:"


def system_principal(
    tenant_id: str, source: str, scopes: frozenset[str] = frozenset({"generate", "embed"})
) -> Principal:
    """Who a batch runs as when no API key started it: the tenant's limits apply (no key's)."""
    return Principal(tenant_id, f"{SYSTEM_KEY_PREFIX}{source}", scopes)


@dataclass(frozen=True, slots=True)
class CallContext:
    principal: Principal
    request_id: str
    endpoint: str


class GenerationService:
    def __init__(
        self,
        *,
        tenants: TenantDirectory,
        key_lookup: Callable[[str], ApiKeyRecord | None],
        limits: RequestLimits,
        cache: ResponseCache,
        router: ModelRouter,
        meter: Meter,
        counter: TokenCounter | None = None,
        offload: Offload | None = None,
    ) -> None:
        self._tenants = tenants
        self._key_lookup = key_lookup
        self._limits = limits
        self._cache = cache
        self._router = router
        self._meter = meter
        self._counter = counter
        # Reservations, settlements and store lookups are blocking store calls: they run off the event loop.
        self._offload = offload or Offload(0)

    # -- planning -------------------------------------------------------------------------

    def _bounds(self, spec: ModelSpec, prompts: list[Prompt], max_tokens: int) -> list[int]:
        """Prompt token bounds; exact where the tokenizer is known, refusing what cannot fit."""
        return [self._bound(spec, prompt, max_tokens)[0] for prompt in prompts]

    def _bound(self, spec: ModelSpec, prompt: Prompt, max_tokens: int) -> tuple[int, bool]:
        """One prompt's token bound and whether it is the exact count (tokenised once per request)."""
        exact = self._counter.count(spec.backend, prompt) if self._counter else None
        if exact is None:
            return prompt_upper_bound(prompt, spec.context_length), False
        if exact + max_tokens > spec.context_length:
            raise InvalidRequest(
                f"this model's context is {spec.context_length} tokens; the prompt has {exact} and "
                f"max_tokens asks for {max_tokens}",
                param="max_tokens" if exact < spec.context_length else "prompt",
                code="context_length_exceeded",
            )
        return exact, True

    @staticmethod
    def max_tokens(spec: ModelSpec, requested: int | None) -> int:
        if requested is None:
            return spec.max_output_tokens
        if requested > spec.max_output_tokens:
            raise InvalidRequest(
                f"max_tokens is {requested}, above this model's limit of {spec.max_output_tokens}",
                param="max_tokens",
                code="max_tokens_exceeded",
            )
        return requested

    async def _reserve(self, ctx: CallContext, tokens: int) -> Reservation:
        """Reserve off the loop (a cancellation meanwhile comes after it: the call is then recorded as cancelled)."""
        return await self._offload.call(self._reserve_now, ctx, tokens)

    async def _cache_get(self, key: CacheKey, model: str) -> bytes | None:
        """L1 on the loop; L2 (the store) off it."""
        if not self._cache.enabled:
            return None
        hit = self._cache.get_l1(key, model)
        return hit if hit is not None else await self._offload.call(self._cache.get_l2, key, model)

    def _reserve_now(self, ctx: CallContext, tokens: int) -> Reservation:
        tenant = self._tenants.get(ctx.principal.tenant_id)
        key = self._key_lookup(ctx.principal.key_id)
        if key is None and ctx.principal.key_id.startswith(SYSTEM_KEY_PREFIX):
            key = ApiKeyRecord(ctx.principal.key_id, tenant.id, "system", "", ctx.principal.scopes, 0.0)
        if key is None:
            raise Unauthorized("unknown API key")
        return self._limits.reserve(tenant, key, tokens)

    # -- generation -------------------------------------------------------------------------

    async def complete(
        self, ctx: CallContext, spec: ModelSpec, prompts: list[Prompt], params: GenerationParams, n: int
    ) -> Completed:
        started = time.perf_counter()
        bounds = self._bounds(spec, prompts, params.max_tokens)
        key = None
        if params.deterministic:
            key = cache_key(
                ctx.principal.tenant_id,
                model_key(spec),
                ctx.endpoint,
                params_dict(params, n),
                [prompt_json(p) for p in prompts],
            )
            hit = await self._cache_get(key, spec.id)
            if hit is not None:
                headers = await self._offload.call(self._served_from_cache, ctx, spec, started)
                return Completed([Generation(**g) for g in json.loads(hit)], spec, True, headers)
        reservation = await self._reserve(ctx, n * (sum(bounds) + len(prompts) * params.max_tokens))
        try:
            if len(prompts) * n == 1:
                # One call is awaited in place: a task costs event-loop round trips (batches ran at 68% of the
                # backend ceiling with it, 86% without).
                results = [await self._router.generate(spec, prompts[0], params)]
            else:
                # A TaskGroup cancels the sibling calls as soon as one fails: nothing runs uncharged.
                async with asyncio.TaskGroup() as group:
                    calls = [
                        group.create_task(self._router.generate(spec, p, params)) for p in prompts for _ in range(n)
                    ]
                results = [t.result() for t in calls]
        except BaseExceptionGroup as group_error:
            first = group_error.exceptions[0]
            await self._fail(ctx, spec, reservation, started, first)
            raise first from None
        except BaseException as exc:
            await self._fail(ctx, spec, reservation, started, exc)
            raise
        generations = [g for g, _ in results]
        served_by = results[0][1]
        done = Completed(generations, served_by, False, reservation.headers)
        answer = None if key is None else (key, json.dumps([generation_json(g) for g in generations]).encode())
        record = functools.partial(
            self._record_and_cache,
            answer,
            reservation,
            done.prompt_tokens + done.completion_tokens,
            request_id=ctx.request_id,
            principal=ctx.principal,
            model=served_by,
            endpoint=ctx.endpoint,
            prompt_tokens=done.prompt_tokens,
            completion_tokens=done.completion_tokens,
            cached=False,
            latency_ms=_ms(started),
            status=200,
        )
        await self._offload.call(record)
        return done

    def _served_from_cache(self, ctx: CallContext, spec: ModelSpec, started: float) -> dict[str, str]:
        """A cached answer costs no tokens: it counts against the request rate only, recorded with 0 tokens."""
        reservation = self._reserve_now(ctx, 0)
        self._record_tokenless(ctx, spec, reservation, started, cached=True, status=200)
        return reservation.headers

    def _record_and_cache(
        self, answer: tuple[CacheKey, bytes] | None, reservation: Reservation, used_tokens: int, **fields: Any
    ) -> None:
        """The end of a call, in one blocking step: settle and record, then keep the answer in the cache."""
        self._record(reservation, used_tokens, **fields)
        if answer is not None:
            self._cache.put(*answer)

    def _record(self, reservation: Reservation, used_tokens: int, **fields: Any) -> None:
        """Settle the reservation and write the usage record in one store call; a request id already
        recorded was charged before, so this attempt's whole reservation is released instead."""
        if not self._meter.record(settle=self._limits.settlement(reservation, used_tokens), **fields):
            self._limits.release(reservation)

    async def _fail(
        self, ctx: CallContext, spec: ModelSpec, reservation: Reservation, started: float, exc: BaseException
    ) -> None:
        """A failed call is charged nothing; its usage record says how it ended."""
        status = exc.status if isinstance(exc, APIError) else 499 if isinstance(exc, asyncio.CancelledError) else 500
        ended = "timeout" if status == 504 else "cancelled" if status == 499 else "failed"
        record = functools.partial(self._record_tokenless, cached=False, status=status, ended=ended)
        await self._offload.call(record, ctx, spec, reservation, started)

    def _record_tokenless(
        self,
        ctx: CallContext,
        spec: ModelSpec,
        reservation: Reservation,
        started: float,
        *,
        cached: bool,
        status: int,
        ended: str = "completed",
    ) -> None:
        """A usage record of no tokens (a cached answer, a failed call); the whole token reservation goes back."""
        self._record(
            reservation,
            0,
            request_id=ctx.request_id,
            principal=ctx.principal,
            model=spec,
            endpoint=ctx.endpoint,
            prompt_tokens=0,
            completion_tokens=0,
            cached=cached,
            latency_ms=_ms(started),
            status=status,
            ended=ended,
        )

    async def stream(self, ctx: CallContext, spec: ModelSpec, prompt: Prompt, params: GenerationParams) -> Streamed:
        """Reserve, then wait for the first event so that early backend errors are plain HTTP errors."""
        started = time.perf_counter()
        bound, exact = self._bound(spec, prompt, params.max_tokens)
        reservation = await self._reserve(ctx, bound + params.max_tokens)
        events = self._router.stream(spec, prompt, params)
        try:
            first = await anext(events)
        except StopAsyncIteration:
            first = None
        except BaseException as exc:
            await self._fail(ctx, spec, reservation, started, exc)
            raise
        charge = StreamCharge(spec, prompt, bound if exact else None, self._counter)
        settle = functools.partial(self._settle_stream, ctx, spec, reservation, started)
        return Streamed(reservation.headers, metered(first, events, charge, settle))

    async def _settle_stream(
        self,
        ctx: CallContext,
        spec: ModelSpec,
        reservation: Reservation,
        started: float,
        prompt_tokens: int,
        completion_tokens: int,
        status: int,
        ended: str,
    ) -> None:
        """A stream's end (core/generation_stream.py): settle to its charge and record how it ended, off the loop."""
        record = functools.partial(
            self._record,
            reservation,
            prompt_tokens + completion_tokens,
            request_id=ctx.request_id,
            principal=ctx.principal,
            model=spec,
            endpoint=ctx.endpoint,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cached=False,
            latency_ms=_ms(started),
            status=status,
            ended=ended,
        )
        await self._offload.call(record)

    # -- embeddings ---------------------------------------------------------------------------

    async def embed(self, ctx: CallContext, spec: ModelSpec, inputs: list[str]) -> Embedded:
        started = time.perf_counter()
        bound = sum(prompt_upper_bound(Prompt(text=t), spec.context_length) for t in inputs)
        key = cache_key(ctx.principal.tenant_id, model_key(spec), "embeddings", {}, inputs)
        hit = await self._cache_get(key, spec.id)
        if hit is not None:
            headers = await self._offload.call(self._served_from_cache, ctx, spec, started)
            return Embedded(Embeddings(**json.loads(hit)), True, headers)
        reservation = await self._reserve(ctx, bound)
        try:
            result, served_by = await self._router.embed(spec, inputs)
        except BaseException as exc:
            await self._fail(ctx, spec, reservation, started, exc)
            raise
        value = json.dumps(
            {"vectors": result.vectors, "prompt_tokens": result.prompt_tokens, "dimensions": result.dimensions}
        ).encode()
        record = functools.partial(
            self._record_and_cache,
            (key, value),
            reservation,
            result.prompt_tokens,
            request_id=ctx.request_id,
            principal=ctx.principal,
            model=served_by,
            endpoint=ctx.endpoint,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=0,
            cached=False,
            latency_ms=_ms(started),
            status=200,
        )
        await self._offload.call(record)
        return Embedded(result, False, reservation.headers)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


__all__ = [
    "SYSTEM_KEY_PREFIX",
    "CallContext",
    "Completed",
    "Embedded",
    "GenerationService",
    "Streamed",
    "TextDelta",
    "system_principal",
]
