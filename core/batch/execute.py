"""One batch line, run: parsed, paced under the tenant's limits, dispatched, and turned into its result."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from core.batch import output
from core.batch.lines import LineError, parse_line
from core.batch.records import line_request_id
from core.domain import Principal
from core.errors import APIError, QuotaExceeded, RateLimited
from core.http import JSON, Request, Response
from core.observability import LOGGER_NAME
from core.offload import Offload
from core.ports import Clock, Metrics, UsageStore

Dispatch = Callable[[Principal, Request], Awaitable[Response]]
Sleep = Callable[[float], Awaitable[None]]
# The limiter's wording when one request alone is above the tokens-per-minute limit: waiting cannot help.
_NEVER_FITS = "this request needs up to"


@dataclass
class Pacing:
    """What one line's refusal tells every worker of the batch."""

    resume_at: float = 0.0  # the rate limit asked to wait until then
    quota_line: int | None = None  # the token quota ran out at this line; later lines are not run


@dataclass(frozen=True, slots=True)
class LineJob:
    """A line to run, and under whose name: ``attempt`` > 1 when the batch is being resumed."""

    batch_id: str
    endpoint: str | None
    principal: Principal
    attempt: int
    line_no: int
    raw: bytes


class LineExecutor:
    """Rate limits are waited out (every worker pauses until ``Retry-After``); an exhausted quota fails
    this line and the ones after it, marked for retry; any other error is this line's result only."""

    def __init__(
        self,
        usage: UsageStore,
        dispatch: Dispatch,
        clock: Clock,
        metrics: Metrics,
        *,
        sleep: Sleep = asyncio.sleep,
        max_rate_waits: int = 30,
        offload: Offload | None = None,
    ) -> None:
        self._usage = usage
        self._offload = offload or Offload(0)  # the store blocks: its calls run off the event loop
        self._dispatch = dispatch
        self._clock = clock
        self._metrics = metrics
        self._sleep = sleep
        self._max_rate_waits = max_rate_waits
        self._log = logging.getLogger(LOGGER_NAME)

    async def _request_id(self, line: LineJob) -> str | APIError:
        """``<batch>:<line>``; on a resumed batch, what an earlier run already charged decides."""
        request_id = line_request_id(line.batch_id, line.line_no)
        if line.attempt <= 1:
            return request_id
        prior = await self._offload.call(self._usage.get_usage, line.principal.tenant_id, request_id)
        if prior is None:
            return request_id
        if prior.status == 200:
            return APIError(
                "an earlier run served and charged this line but stopped before storing its result; "
                "it is not run again so that it is not charged twice",
                code="result_lost",
            )
        return f"{request_id}:r{line.attempt}"  # that attempt failed and was charged nothing

    async def run(self, line: LineJob, pacing: Pacing) -> dict[str, Any]:
        call = parse_line(line.raw, line.line_no, line.endpoint)
        if isinstance(call, LineError):
            return output.line_error_result(call)
        request_id = await self._request_id(line)
        if isinstance(request_id, APIError):
            return output.api_error_result(line_request_id(line.batch_id, line.line_no), call.custom_id, request_id)
        if pacing.quota_line is not None:
            refusal = QuotaExceeded(f"not run: the token quota ran out at line {pacing.quota_line}")
            return output.api_error_result(request_id, call.custom_id, refusal, retry=True)
        waits = 0
        while True:
            while (delay := pacing.resume_at - self._clock.now()) > 0:
                await self._sleep(delay)
            request = Request("POST", call.url, {"content-type": JSON}, {}, call.body, request_id=request_id)
            try:
                response = await self._dispatch(line.principal, request)
            except RateLimited as exc:
                waits += 1
                if exc.message.startswith(_NEVER_FITS) or waits > self._max_rate_waits:
                    return output.api_error_result(request_id, call.custom_id, exc)
                self._metrics.incr("batch_rate_limit_waits_total")
                retry_after = float(exc.headers.get("retry-after") or 1)
                pacing.resume_at = max(pacing.resume_at, self._clock.now() + retry_after)
                continue
            except QuotaExceeded as exc:
                n = line.line_no
                pacing.quota_line = n if pacing.quota_line is None else min(pacing.quota_line, n)
                message = f"{exc.message} (at line {n}: this line and the ones after it were not run)"
                return output.api_error_result(request_id, call.custom_id, exc, retry=True, message=message)
            except APIError as exc:
                return output.api_error_result(request_id, call.custom_id, exc)
            except Exception:
                self._log.exception("batch line failed", extra={"fields": {"request_id": request_id}})
                return output.api_error_result(request_id, call.custom_id, APIError("internal error"))
            return output.ok_result(request_id, call.custom_id, json.loads(response.body))
