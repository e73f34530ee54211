"""Metering: one usage record per request, idempotent by request id, plus token metrics."""

from __future__ import annotations

from collections.abc import Sequence

from core.domain import CounterChange, ModelSpec, Principal, UsageRecord
from core.ports import Clock, Metrics, UsageStore


class Meter:
    def __init__(self, usage: UsageStore, clock: Clock, metrics: Metrics) -> None:
        self._usage = usage
        self._clock = clock
        self._metrics = metrics

    def record(
        self,
        *,
        request_id: str,
        principal: Principal,
        model: ModelSpec,
        endpoint: str,
        prompt_tokens: int,
        completion_tokens: int,
        cached: bool,
        latency_ms: float,
        status: int,
        ended: str = "completed",
        settle: Sequence[CounterChange] = (),
    ) -> bool:
        """Write what this request was charged, with its settlement, in one store write.

        Returns False when the request id was already recorded: nothing new was written.
        """
        record = UsageRecord(
            request_id=request_id,
            tenant_id=principal.tenant_id,
            key_id=principal.key_id,
            model=model.id,
            endpoint=endpoint,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cached=cached,
            latency_ms=latency_ms,
            status=status,
            created_at=self._clock.now(),
            cost=0.0 if cached else model.cost(prompt_tokens, completion_tokens),
            ended=ended,
        )
        if not self._usage.record_usage(record, settle):
            return False
        dims = {"model": model.id, "tenant": principal.tenant_id}
        if prompt_tokens:
            self._metrics.incr("prompt_tokens_total", prompt_tokens, **dims)
        if completion_tokens:
            self._metrics.incr("tokens_generated_total", completion_tokens, **dims)
        return True
