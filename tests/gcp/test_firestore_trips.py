"""The gateway on FirestoreStore (emulator): the Firestore round trips of one generation, and where they go."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from adapters.gcp.firestore import FirestoreStore
from core.app import Gateway
from core.auth import api_keys
from core.clock import FixedClock
from core.domain import Limits, Tenant
from core.http import Request, Response
from tests.fakes import GEN, FakeBackend, Resolver
from tests.gcp.firestore_emulator import FirestoreEmulator

pytestmark = pytest.mark.gcp
LIMITS = Limits(requests_per_minute=100, tokens_per_minute=100_000, token_quota=1_000_000)
_METHODS = {
    "batch_get_documents": "BatchGetDocuments",
    "commit": "Commit",
    "rollback": "Rollback",
    "run_query": "RunQuery",
    "begin_transaction": "BeginTransaction",
}


class _Recorder:
    """The GAPIC client, every call of the store's recorded by its RPC name (a round trip each)."""

    def __init__(self, api: Any, calls: list[str]) -> None:
        self._api = api
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._api, name)
        if name not in _METHODS:
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            self._calls.append(_METHODS[name])
            return method(*args, **kwargs)

        return call


def recorded(store: FirestoreStore) -> list[str]:
    """Every Firestore RPC the store makes from now on."""
    calls: list[str] = []
    store.rpc.api = _Recorder(store.rpc.api, calls)
    return calls


@dataclass
class Setup:
    gateway: Gateway
    store: FirestoreStore
    key: str

    def generate(self, prompt: str, **fields: Any) -> Response:
        body = json.dumps({"model": GEN.id, "prompt": prompt, "max_tokens": 16, **fields}).encode()
        headers = {"authorization": f"Bearer {self.key}"}
        return asyncio.run(self.gateway.handle(Request("POST", "/v1/generate", headers, {}, body)))


@pytest.fixture
def setup(firestore_emulator_host: FirestoreEmulator) -> Iterator[Setup]:
    from tests.gcp.test_firestore_store import firestore_store

    clock = FixedClock()
    store = firestore_store(clock.now)
    store.put_model(GEN)
    tenant = Tenant("ten_a", "a", clock.now(), LIMITS)  # rpm + tpm + quota: the minute and the month items
    store.put_tenant(tenant)
    key, record = api_keys.mint(tenant.id, "k", frozenset({"generate"}), clock.now(), limits=Limits(100, 50_000))
    store.put_key(record)
    gateway = Gateway(store, Resolver({"gen": FakeBackend()}), clock=clock)
    yield Setup(gateway, store, key)
    store.close()


def test_a_cache_miss_generation_makes_two_transactions_plus_the_cache(setup: Setup) -> None:
    """Measured with the key, tenant and model in the per-process caches (a warm instance)."""
    assert setup.generate("warm the caches up", temperature=0).status == 200
    calls = recorded(setup.store)
    response = setup.generate("a prompt nobody sent before", temperature=0)
    assert response.status == 200
    assert response.headers["x-ratelimit-remaining-requests"] == "98"
    assert calls == [
        "BatchGetDocuments",  # the L2 response cache: a miss
        "BatchGetDocuments",  # reserve: reads the minute and month items, beginning the transaction
        "Commit",  # ... and writes them: one transaction
        "BatchGetDocuments",  # record + settle: reads the settled items, beginning the transaction
        "Commit",  # ... record (create-only), aggregate shard, settlement: one transaction
        "Commit",  # the L2 response cache: the new answer
    ]


def test_a_sampled_generation_makes_four_round_trips(setup: Setup) -> None:
    assert setup.generate("warm the caches up").status == 200
    calls = recorded(setup.store)
    assert setup.generate("another prompt").status == 200
    assert calls == ["BatchGetDocuments", "Commit", "BatchGetDocuments", "Commit"]


def test_the_charge_is_settled_exactly_once_and_every_path_begins_with_the_tenant(setup: Setup) -> None:
    response = setup.generate("one two three", max_tokens=16)
    assert response.status == 200
    usage = json.loads(response.body)["usage"]
    counters = list(setup.store.client.collection("tenants/ten_a/counters").stream())
    minute = next(d.to_dict() for d in counters if d.id.startswith("rl|"))
    month = next(d.to_dict() for d in counters if d.id.startswith("q|"))
    assert minute["c"]["tok"] == usage["total_tokens"]
    assert month["c"]["used"] == usage["total_tokens"]
    assert minute["expires_at"].timestamp() == pytest.approx(minute["x"], abs=1e-3)  # the TTL field
    roots = {c.id for c in setup.store.client.collections()}
    assert roots == {"tenants", "key_index", "models"}
    tenant = setup.store.client.document("tenants/ten_a")
    assert {c.id for c in tenant.collections()} == {"keys", "counters", "usage", "daily"}


def test_with_budget_slices_a_generation_makes_fewer_than_three_round_trips_for_its_limits_and_usage(
    firestore_emulator_host: FirestoreEmulator,
) -> None:
    """What the Google Cloud runtime runs (``counter_slice_requests``), for a busy tenant: a request takes its
    budget from the instance's slice in memory, so its record is one commit with nothing to read, and a guard
    read serves the instance's requests for 0.1 s; the slice's own writes (its reservation, its charge, its
    give-back riding with a record) are shared by its requests. Sampled requests: no response cache."""
    from core.settings import GatewaySettings
    from tests.gcp.test_firestore_store import firestore_store

    clock = FixedClock()
    store = firestore_store(clock.now)
    store.put_model(GEN)
    busy = Limits(requests_per_minute=100_000, tokens_per_minute=10**7, token_quota=10**9)  # slices need room
    tenant = Tenant("ten_s", "s", clock.now(), busy)
    store.put_tenant(tenant)
    key, record = api_keys.mint(tenant.id, "k", frozenset({"generate"}), clock.now())
    store.put_key(record)
    settings = GatewaySettings(counter_slice_requests=16)
    setup = Setup(Gateway(store, Resolver({"gen": FakeBackend()}), clock=clock, settings=settings), store, key)
    try:
        assert setup.generate("warm the caches up").status == 200
        calls = recorded(store)
        for i in range(32):
            assert setup.generate(f"prompt number {i}").status == 200
            clock.advance(0.05)  # 20 requests a second: the guard read is shared by two
        assert len(calls) / 32 < 3.0, calls  # without slices: 4 (test_a_sampled_generation_makes_four...)
    finally:
        store.close()
