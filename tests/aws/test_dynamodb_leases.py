"""Reservation leases on DynamoDB: the same suite as the local stores (tests/unit/test_leases.py), on moto.

A lease slot lives in the tenant's counters item like the quota it leases: the reservation, the turnover
and the reclaim are each one conditional UpdateItem on that item.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from adapters.aws.dynamodb import DynamoDBStore
from adapters.aws.dynamodb_table import Connection
from core.clock import FixedClock
from tests.aws.test_dynamodb_store import dynamodb_store
from tests.unit import test_leases as suite

pytestmark = pytest.mark.aws
LEASE_TESTS = [
    getattr(suite, name)
    for name in sorted(dir(suite))
    if name.startswith("test_") and "store" in getattr(suite, name).__code__.co_varnames
]


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(1_767_225_600.0 + 3 * 86_400)


@pytest.fixture
def store(atomic_moto_url: str, moto: str, clock: FixedClock) -> DynamoDBStore:
    from adapters.aws.dynamodb_table import connect

    connection: Connection = connect(atomic_moto_url, "us-east-1", max_attempts=2)
    return dynamodb_store(connection, clock.now)


@pytest.mark.parametrize("lease_test", LEASE_TESTS, ids=lambda f: f.__name__.removeprefix("test_"))
def test_leases(lease_test: Callable[..., None], store: DynamoDBStore, clock: FixedClock) -> None:
    lease_test(store, clock)
