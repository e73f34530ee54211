"""DynamoDBStore under contention (16 threads on moto): limits never overshoot, counts and charges are exact.

The server is ``atomic_moto_url``: moto with one request at a time, because DynamoDB applies each call
atomically and moto's backend takes no lock (see ``test_dynamodb_store``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from adapters.aws.dynamodb import DynamoDBStore
from core.domain import CounterChange, UsageRecord
from tests.aws.test_dynamodb_store import dynamodb_store, dynamodb_url
from tests.contract.test_store_contract import T0, FakeClock

pytestmark = pytest.mark.aws
__all__ = ["dynamodb_url"]  # fixtures used here, defined with the store tests
THREADS = 16
STEP = 7
LIMIT = 350
EXPECTED_OK = LIMIT // STEP  # 50
FAR = T0 + 3600
R = TypeVar("R")


def race(work: Callable[[int], R], threads: int = THREADS) -> list[R]:
    """Run ``work(i)`` in ``threads`` threads released together; their results, errors re-raised."""
    barrier = threading.Barrier(threads)
    results: list[R] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        barrier.wait()
        try:
            result = work(i)
        except BaseException as exc:
            errors.append(exc)
            return
        with lock:
            results.append(result)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=60)
    if errors:
        raise errors[0]
    return results


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(dynamodb_url: str, clock: FakeClock) -> Iterator[DynamoDBStore]:
    s = dynamodb_store(dynamodb_url, clock, max_attempts=5)
    yield s
    s.close()


def test_racing_try_add_never_passes_the_limit_and_counts_exactly(store: DynamoDBStore) -> None:
    def hammer(_: int) -> int:
        ok = 0
        for _ in range(EXPECTED_OK // THREADS + 2):  # 5 each, 80 in all: more than the limit allows
            applied, values = store.try_add("item", {"t": STEP}, {"t": LIMIT}, FAR)
            assert values.get("t", 0) <= LIMIT
            ok += applied
        return ok

    assert sum(race(hammer)) == EXPECTED_OK
    assert store.read("item") == {"t": EXPECTED_OK * STEP}  # 350


def test_racing_writers_replace_an_expired_item_once(store: DynamoDBStore, clock: FakeClock) -> None:
    store.try_add("w", {"t": 500, "stale": 1}, {}, T0 + 60)
    clock.now = T0 + 61  # expired, still in the table (DynamoDB's TTL is late)
    outcomes = race(lambda _: store.try_add("w", {"t": STEP}, {"t": 10 * STEP}, T0 + 120))
    assert sum(ok for ok, _ in outcomes) == 10
    assert store.read("w") == {"t": 10 * STEP}  # the old values are gone, none of the new is lost


def test_racing_two_item_reservations_undo_exactly(store: DynamoDBStore) -> None:
    """The minute item allows 40 requests, the quota 30 x 7 tokens: the quota refuses, undoes the minute."""

    def reserve(_: int) -> int:
        ok = 0
        for _ in range(4):  # 64 attempts for 30 places: undone ones may crowd the minute for a moment
            applied, _values = store.try_add_all(
                [
                    CounterChange("m", {"req": 1, "tok": STEP}, {"req": 40}, FAR),
                    CounterChange("q", {"used": STEP}, {"used": 30 * STEP}, FAR),
                ]
            )
            ok += applied
        return ok

    assert sum(race(reserve)) == 30
    assert store.read("m") == {"req": 30, "tok": 30 * STEP}
    assert store.read("q") == {"used": 30 * STEP}


def test_racing_usage_records_are_written_and_settled_once(store: DynamoDBStore) -> None:
    store.try_add("q", {"used": 10_000}, {}, FAR)

    def record(i: int) -> int:
        written = 0
        for n in range(5):  # every thread tries the same five request ids
            usage = UsageRecord(f"r{n}", "t1", "k1", "m", "/v1/generate", 3, 4, False, 1.0, 200, T0, 0.5)
            written += store.record_usage(usage, [CounterChange("q", {"used": -100}, expires_at=FAR)])
        return written

    assert sum(race(record)) == 5
    assert store.read("q") == {"used": 10_000 - 5 * 100}
    [aggregate] = store.daily_usage("t1", "2024-03-10", "2024-03-10")
    assert (aggregate.requests, aggregate.prompt_tokens, aggregate.cost) == (5, 15, 2.5)
