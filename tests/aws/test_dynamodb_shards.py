"""Budget shards on DynamoDB: the sharded-counter suite (tests/unit/test_budget_shards.py) on moto.

Each shard of a tenant's counters is an item of its own (``T#<tenant>#S#<shard>``), so a draw or a
rebalance writes several items one after the other with undo (DynamoDBCounters), where the memory and
SQLite stores write them in one transaction: the suite must hold all the same.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest
from pynamodb.connection import Connection

from adapters.aws.dynamodb import DynamoDBStore
from core.clock import FixedClock
from tests.aws.test_dynamodb_store import call_contract, dynamodb_store
from tests.unit import test_budget_shards as suite

pytestmark = pytest.mark.aws
# A race between threads of one process is the enforcer's, whatever the store: run on memory and SQLite only
# (on moto, which takes one call at a time, it costs 45 s).
IN_PROCESS_RACES = {"test_every_refusal_of_a_concurrent_burst_reports_nothing_left"}
SUITE = [
    getattr(suite, name)
    for name in sorted(dir(suite))
    if name.startswith("test_")
    and name not in IN_PROCESS_RACES
    and "store" in inspect.signature(getattr(suite, name)).parameters
]


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(1_767_225_600.0 + 3 * 86_400 + 7)


@pytest.fixture
def store(atomic_moto_url: str, moto: str, shared_connection: Connection, clock: FixedClock) -> DynamoDBStore:
    return dynamodb_store(shared_connection, clock.now)


@pytest.fixture(scope="module")
def shared_connection(atomic_moto_url: str) -> Connection:
    from adapters.aws.dynamodb_table import connect
    from tests.aws.support import REGION

    return connect(atomic_moto_url, REGION, max_attempts=2)


@pytest.mark.parametrize("shard_test", SUITE, ids=lambda f: f.__name__.removeprefix("test_"))
def test_budget_shards_on_dynamodb(shard_test: Callable[..., None], store: DynamoDBStore, clock: FixedClock) -> None:
    call_contract(shard_test, {"store": store, "clock": clock})


def test_each_shard_is_an_item_and_a_partition_of_its_own(store: DynamoDBStore, clock: FixedClock) -> None:
    suite.test_the_whole_quota_is_granted_across_shards_and_not_a_token_more(store, clock)
    month = "2026-01"
    shard_items = [s for s in range(1, 9) if store._table.get(f"T#t1#S#{s}", "LIMITS")]
    assert len(shard_items) > 1
    assert store.read(f"q|t1|{month}|{shard_items[0]}")  # read back by its core name
