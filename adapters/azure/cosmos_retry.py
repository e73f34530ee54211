"""CosmosCalls: every Cosmos DB call of the store, its retries and what its errors mean.

The client is built with the SDK's throttling retries off (``RetryOptions(0)``) and endpoint discovery off (the
SDK would resend a write that met a 503 or a timeout to another region), so these rules are the only ones:

* 429 (``x-ms-retry-after-ms`` honoured, plus jitter) and 449 applied nothing: retried a bounded number of times
  (at most ``MAX_THROTTLE_WAIT_S`` of waiting), then ``StoreThrottled`` (503; core spreads a busy tenant's
  counters over more shards when it sees one). A read that failed (timeout, dropped connection, 408, 5xx) is
  retried with jittered backoff, then 503.
* A write whose answer was lost (timeout, dropped connection, 408, any 5xx) may have been applied: an increment
  sent twice is a double charge, so it is NOT sent again: ``MaybeApplied`` (503). Only ``idempotent`` writes (a
  whole item upserted) are resent, and any request that was never sent (``ServiceRequestError``).
* 404, 409 and 412 are answers, raised to the caller as the SDK's errors; 400, 401, 403 are bugs or
  misconfiguration, raised as they are.

The emulator answers a point read of a missing id with HTTP 500 ``Cannot read properties of undefined (reading
...)``: ``read_item`` takes exactly that as not found; Cosmos DB answers 404, taken the same way.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from azure.core.exceptions import AzureError, ServiceRequestError
from azure.cosmos import exceptions as cex

from core.errors import ServiceUnavailable, StoreThrottled

T = TypeVar("T")
Doc = dict[str, Any]
NOT_FOUND, CONFLICT, PRECONDITION_FAILED = 404, 409, 412
ROUNDS = 8  # attempts of one call
MAX_THROTTLE_WAIT_S = 5.0
_EMULATOR_MISSING = "Cannot read properties of undefined (reading"


class MaybeApplied(ServiceUnavailable):
    """A write got no answer: it may have been applied, so it is not sent again (503 ``store_unavailable``)."""

    code = "store_unavailable"

    def __init__(self) -> None:
        super().__init__("the database did not answer a write; retry shortly", headers={"retry-after": "1"})


def pause(attempt: int) -> float:
    """Exponential backoff with full jitter: up to 10, 20, 40 ... ms, at most 1 s (jitter: not a secret)."""
    return random.uniform(0, min(1.0, 0.01 * 2**attempt))  # noqa: S311  # nosec B311


class CosmosCalls:
    """Runs SDK calls under the rules above; ``sleep`` is injectable (tests)."""

    def __init__(self, rounds: int = ROUNDS, sleep: Callable[[float], None] = time.sleep) -> None:
        self.rounds = rounds
        self.sleep = sleep

    def read(self, call: Callable[[], T]) -> T:
        return self._run(call, resend=True)

    def write(self, call: Callable[[], T], *, idempotent: bool = False) -> T:
        return self._run(call, resend=idempotent)

    def _run(self, call: Callable[[], T], *, resend: bool) -> T:
        waited, throttled = 0.0, False
        for attempt in range(self.rounds):
            try:
                return call()
            except cex.CosmosHttpResponseError as exc:
                status = exc.status_code
                if status in (429, 449):
                    throttled = True
                    wait = pause(attempt) + _retry_after_s(exc)
                    if waited + wait > MAX_THROTTLE_WAIT_S:
                        break
                    waited += wait
                    self.sleep(wait)
                    continue
                if status is None or (status < 500 and status != 408) or _emulator_missing(exc):
                    raise  # an answer (404, 409, 412), a bug or a misconfiguration
                if not resend:
                    raise MaybeApplied() from exc
            except ServiceRequestError:
                pass  # nothing was sent
            except AzureError as exc:  # a timeout or a dropped connection after the request was sent
                if not resend:
                    raise MaybeApplied() from exc
            if attempt + 1 < self.rounds:
                self.sleep(pause(attempt))
        if throttled:
            raise StoreThrottled()
        raise ServiceUnavailable(
            "the database is busy or unreachable; retry shortly", code="store_unavailable", headers={"retry-after": "1"}
        )


def _emulator_missing(exc: cex.CosmosHttpResponseError) -> bool:
    return exc.status_code == 500 and _EMULATOR_MISSING in str(exc.message)


def _retry_after_s(exc: cex.CosmosHttpResponseError) -> float:
    try:
        return max(0.0, float(exc.headers.get("x-ms-retry-after-ms") or 0) / 1000.0)
    except (TypeError, ValueError):
        return 0.0


def query(
    calls: CosmosCalls, container: Any, sql: str, params: dict[str, Any], partition_key: list[str] | None
) -> list[Doc]:
    """A query read whole; ``partition_key`` a full key or the tenant alone (a prefix: its partitions only)."""
    parameters = [{"name": name, "value": value} for name, value in params.items()]
    extra: dict[str, Any] = {"partition_key": partition_key} if partition_key is not None else {}
    return calls.read(
        lambda: list(container.query_items(sql, parameters=parameters, enable_cross_partition_query=True, **extra))
    )


def read_item(calls: CosmosCalls, container: Any, item_id: str, partition_key: list[str]) -> Doc | None:
    """A point read (1 RU for 1 KB): the item, or None when there is none (404, or the emulator's 500)."""
    try:
        found: Doc = calls.read(lambda: container.read_item(item_id, partition_key=partition_key))
    except cex.CosmosHttpResponseError as exc:
        if exc.status_code == NOT_FOUND or _emulator_missing(exc):
            return None
        raise
    return found


def delete_item(calls: CosmosCalls, container: Any, item_id: str, partition_key: list[str]) -> bool:
    """Delete an item; whether it was there (a lost answer is a 503: sent again, a 404 would hide the delete)."""
    try:
        calls.write(lambda: container.delete_item(item_id, partition_key=partition_key))
    except cex.CosmosHttpResponseError as exc:
        if exc.status_code == NOT_FOUND:
            return False
        raise
    return True
