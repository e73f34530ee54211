"""Store contract: one behavioural suite every Store adapter must pass (memory and SQLite here)."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from adapters.local.memory_store import MemoryStore
from adapters.local.sqlite_store import SQLiteStore
from core.domain import (
    ALL_SCOPES,
    ApiKeyRecord,
    CounterChange,
    Limits,
    ModelSpec,
    SigningKey,
    Tenant,
    UsageAggregate,
    UsageRecord,
)
from core.ports import Store

T0 = datetime(2024, 3, 10, 12, 0, tzinfo=UTC).timestamp()
DAY = 86400.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[Store]:
    if request.param == "memory":
        s: MemoryStore | SQLiteStore = MemoryStore(clock=clock)
    else:
        s = SQLiteStore(tmp_path / "store.db", clock=clock)
    yield s
    s.close()


def _usage(request_id: str, **overrides: object) -> UsageRecord:
    values: dict[str, object] = {
        "request_id": request_id,
        "tenant_id": "t1",
        "key_id": "k1",
        "model": "small",
        "endpoint": "/v1/completions",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cached": False,
        "latency_ms": 12.5,
        "status": 200,
        "created_at": T0,
        "cost": 0.25,
    }
    values.update(overrides)
    return UsageRecord(**values)  # type: ignore[arg-type]


def _model(model_id: str = "small", **overrides: object) -> ModelSpec:
    spec = ModelSpec(
        id=model_id,
        kind="generation",
        backend={"type": "openai", "url": "http://x", "headers": {"a": "b"}, "weights": [1, 2.5]},
        context_length=4096,
        max_output_tokens=256,
        price_per_1k_prompt_tokens=0.1,
        price_per_1k_completion_tokens=0.2,
        fallbacks=("tiny", "other"),
        version="3",
        created_at=T0 + 0.125,
        timeout_s=7.5,
        max_retries=4,
        metadata={"family": "smollm", "tags": ["a", "b"], "nested": {"x": None}},
    )
    return dataclasses.replace(spec, **overrides)  # type: ignore[arg-type]


# -- tenants ----------------------------------------------------------------------------------------


def test_tenant_round_trip_overwrite_and_list(store: Store) -> None:
    limits = Limits(requests_per_minute=60, tokens_per_minute=1000, token_quota=10**9, quota_period="day")
    b = Tenant(id="b", name="Bee", created_at=T0 + 1, limits=limits, suspended_at=T0 + 2.5)
    a = Tenant(id="a", name="Ay", created_at=T0)
    store.put_tenant(b)
    store.put_tenant(a)
    assert store.get_tenant("b") == b
    assert store.get_tenant("a") == a
    assert store.get_tenant("missing") is None
    assert store.list_tenants() == [a, b]
    renamed = dataclasses.replace(b, name="Bee 2", limits=Limits(), suspended_at=None)
    store.put_tenant(renamed)
    assert store.get_tenant("b") == renamed
    assert len(store.list_tenants()) == 2


# -- keys -------------------------------------------------------------------------------------------


def test_key_round_trip_and_listing_per_tenant(store: Store) -> None:
    key = ApiKeyRecord(
        id="k1",
        tenant_id="t1",
        name="ci",
        key_hash="ab" * 32,
        scopes=frozenset({"generate", "embed"}),
        created_at=T0,
        expires_at=T0 + 3600,
        limits=Limits(requests_per_minute=5),
        prefix="tn_abc",
    )
    other = dataclasses.replace(key, id="k2", scopes=ALL_SCOPES, created_at=T0 + 1, expires_at=None)
    foreign = dataclasses.replace(key, id="k3", tenant_id="t2", scopes=frozenset())
    for k in (other, key, foreign):
        store.put_key(k)
    got = store.get_key("k1")
    assert got == key
    assert got is not None
    assert isinstance(got.scopes, frozenset)
    assert store.get_key("k3") == foreign
    assert store.get_key("nope") is None
    assert store.list_keys("t1") == [key, other]
    assert store.list_keys("t2") == [foreign]
    assert store.list_keys("t3") == []


def test_revoked_key_is_stored_and_inactive(store: Store) -> None:
    key = ApiKeyRecord("k1", "t1", "n", "h", frozenset({"generate"}), created_at=T0)
    store.put_key(key)
    stored = store.get_key("k1")
    assert stored is not None
    assert stored.is_active(T0 + 1)
    store.put_key(dataclasses.replace(key, revoked_at=T0 + 5))
    revoked = store.get_key("k1")
    assert revoked is not None
    assert revoked.revoked_at == T0 + 5
    assert not revoked.is_active(T0 + 6)
    assert store.list_keys("t1") == [revoked]


# -- counters ---------------------------------------------------------------------------------------


def test_try_add_applies_and_accumulates(store: Store) -> None:
    assert store.read("w") == {}
    assert store.try_add("w", {"rpm": 1, "tpm": 100}, {"rpm": 3, "tpm": 1000}, T0 + 60) == (
        True,
        {"rpm": 1, "tpm": 100},
    )
    assert store.try_add("w", {"rpm": 1, "tpm": 200}, {"rpm": 3, "tpm": 1000}, T0 + 60) == (
        True,
        {"rpm": 2, "tpm": 300},
    )
    assert store.read("w") == {"rpm": 2, "tpm": 300}
    assert store.read("other") == {}


def test_try_add_may_reach_the_limit_exactly(store: Store) -> None:
    assert store.try_add("w", {"n": 10}, {"n": 10}, T0 + 60) == (True, {"n": 10})
    assert store.try_add("w", {"n": 1}, {"n": 10}, T0 + 60) == (False, {"n": 10})


def test_try_add_refusal_writes_nothing_and_returns_values_seen(store: Store) -> None:
    store.try_add("w", {"a": 5, "b": 1, "c": 2}, {}, T0 + 60)
    applied, seen = store.try_add("w", {"a": 1, "b": 100, "d": 3}, {"a": 10, "b": 50}, T0 + 60)
    assert applied is False
    assert seen == {"a": 5, "b": 1, "c": 2}
    assert store.read("w") == {"a": 5, "b": 1, "c": 2}
    # On an absent item the refusal writes nothing either.
    assert store.try_add("fresh", {"a": 11}, {"a": 10}, T0 + 60) == (False, {})
    assert store.read("fresh") == {}


def test_field_without_limit_just_adds_and_limits_cover_unincremented_fields(store: Store) -> None:
    assert store.try_add("w", {"tok": 10**12}, {"rpm": 1}, T0 + 60) == (True, {"tok": 10**12})
    store.add("w", {"rpm": 5})
    # "rpm" is over its limit already: even a request not incrementing it is refused.
    assert store.try_add("w", {"tok": 1}, {"rpm": 4}, T0 + 60) == (False, {"tok": 10**12, "rpm": 5})
    assert store.try_add("w", {"tok": 1}, {"rpm": 5}, T0 + 60) == (True, {"tok": 10**12 + 1, "rpm": 5})


def test_add_with_negative_deltas_and_missing_fields(store: Store) -> None:
    store.try_add("w", {"tpm": 500, "rpm": 1}, {"tpm": 1000}, T0 + 60)
    store.add("w", {"tpm": -380, "new": 2})
    assert store.read("w") == {"tpm": 120, "rpm": 1, "new": 2}
    store.add("w", {"rpm": -1})
    assert store.read("w") == {"tpm": 120, "rpm": 0, "new": 2}
    # The room freed by a negative delta is usable.
    assert store.try_add("w", {"tpm": 880}, {"tpm": 1000}, T0 + 60)[0] is True
    store.add("absent", {"x": -3})
    assert store.read("absent") == {"x": -3}


def test_counters_expire(store: Store, clock: FakeClock) -> None:
    store.try_add("w", {"n": 3}, {"n": 5}, T0 + 60)
    clock.now = T0 + 60  # expires_at == now: still live
    assert store.read("w") == {"n": 3}
    assert store.try_add("w", {"n": 3}, {"n": 5}, T0 + 60) == (False, {"n": 3})
    clock.now = T0 + 60.5
    assert store.read("w") == {}
    assert store.try_add("w", {"n": 3}, {"n": 5}, T0 + 120) == (True, {"n": 3})
    assert store.read("w") == {"n": 3}
    clock.now = T0 + 121
    store.add("w", {"n": 1})  # an expired item counts as absent
    assert store.read("w") == {"n": 1}


def test_read_many_reads_each_item_in_order_absent_and_expired_ones_empty(store: Store, clock: FakeClock) -> None:
    store.try_add("rl|t1|1", {"req": 2}, {"req": 5}, T0 + 60)
    store.try_add("rl|t1|1|3", {"b|req#5": -1, "n": 1}, {}, T0 + 60)
    store.try_add("rl|t1|1|4", {"n": 7}, {}, T0 + 10)  # expires first
    store.add("q|t2|2026-01", {"used": 40}, T0 + 3600)  # another tenant's, another kind
    items = ["rl|t1|1|4", "rl|t1|1|3", "absent", "rl|t1|1", "q|t2|2026-01", "rl|t1|1|3"]
    assert store.read_many(items) == [store.read(item) for item in items]
    assert store.read_many(items) == [
        {"n": 7},
        {"b|req#5": -1, "n": 1},
        {},
        {"req": 2},
        {"used": 40},
        {"b|req#5": -1, "n": 1},
    ]
    clock.now = T0 + 30
    assert store.read_many(items)[0] == {}
    assert store.read_many([]) == []


def test_try_add_refreshes_expiry_of_the_whole_item(store: Store, clock: FakeClock) -> None:
    store.try_add("w", {"a": 1}, {}, T0 + 10)
    store.try_add("w", {"b": 1}, {}, T0 + 100)
    clock.now = T0 + 50
    assert store.read("w") == {"a": 1, "b": 1}


def test_many_counter_writes_purge_expired_items_without_losing_live_ones(store: Store, clock: FakeClock) -> None:
    for i in range(300):
        store.try_add(f"old{i}", {"n": 1}, {}, T0 + 1)
    clock.now = T0 + 2
    for i in range(1100):
        store.try_add("live", {"n": 1}, {"n": 10**6}, T0 + 60)
        if i < 50:
            store.cache_put("t1", f"c{i}", b"v", T0 + 1)
    assert store.read("live") == {"n": 1100}
    assert store.read("old7") == {}
    assert store.cache_get("t1", "c3", T0 + 2) is None


# -- usage ------------------------------------------------------------------------------------------


def test_try_add_all_applies_every_item_or_none(store: Store) -> None:
    far = T0 + 3600
    ok, values = store.try_add_all(
        [
            CounterChange("m", {"req": 1, "tok": 40}, {"req": 2}, far),
            CounterChange("q", {"used": 40}, {"used": 100}, far),
        ]
    )
    assert ok
    assert values == [{"req": 1, "tok": 40}, {"used": 40}]
    # The second item refuses: the first must not change either, and both are reported as seen.
    ok, values = store.try_add_all(
        [
            CounterChange("m", {"req": 1, "tok": 70}, {"req": 2}, far),
            CounterChange("q", {"used": 70}, {"used": 100}, far),
        ]
    )
    assert not ok
    assert values == [{"req": 1, "tok": 40}, {"used": 40}]
    assert store.read("m") == {"req": 1, "tok": 40}
    assert store.read("q") == {"used": 40}
    # The first item refuses: nothing is written to the second.
    ok, _ = store.try_add_all(
        [CounterChange("m", {"req": 5}, {"req": 2}, far), CounterChange("q", {"used": 1}, {"used": 100}, far)]
    )
    assert not ok
    assert store.read("q") == {"used": 40}


def test_record_usage_settles_counters_in_the_same_write_and_only_once(store: Store) -> None:
    far = T0 + 3600
    store.try_add_all([CounterChange("q", {"used": 100}, {"used": 1000}, far)])
    settle = [CounterChange("q", {"used": -60}, expires_at=far)]
    assert store.record_usage(_usage("r1"), settle) is True
    assert store.read("q") == {"used": 40}
    # A duplicate of the same request id writes nothing: no second settlement.
    assert store.record_usage(_usage("r1"), settle) is False
    assert store.read("q") == {"used": 40}


def test_floors_bound_fields_from_below_and_with_a_limit_make_an_equality(store: Store) -> None:
    far = T0 + 3600
    assert store.try_add_all([CounterChange("f", {"epoch": 7, "v": 1}, expires_at=far)])[0]
    exactly_7 = {"epoch": 7}
    ok, seen = store.try_add_all([CounterChange("f", {"v": 1}, exactly_7, far, floors=exactly_7)])
    assert ok
    ok, seen = store.try_add_all([CounterChange("f", {"v": 1}, {"epoch": 8}, far, floors={"epoch": 8})])
    assert not ok
    assert seen == [{"epoch": 7, "v": 2}]
    # An absent field counts as 0 against a floor, as it does against a limit.
    assert store.try_add_all([CounterChange("f", {"v": 1}, floors={"missing": 0}, expires_at=far)])[0]
    assert not store.try_add_all([CounterChange("f", {"v": 1}, floors={"missing": 1}, expires_at=far)])[0]
    # A floor on an incremented field is checked after the increment: the change that would go below is refused.
    assert not store.try_add_all([CounterChange("f", {"v": -4}, floors={"v": 0}, expires_at=far)])[0]
    assert store.try_add_all([CounterChange("f", {"v": -3}, floors={"v": 0}, expires_at=far)])[0]
    assert store.read("f") == {"epoch": 7, "v": 0}


def test_a_conditional_settlement_adds_its_otherwise_when_its_conditions_fail(store: Store) -> None:
    far = T0 + 3600
    store.try_add_all([CounterChange("q", {"used": 100, "lease": 100, "epoch": 3}, expires_at=far)])
    at_3 = {"epoch": 3}
    settle = CounterChange("q", {"used": -60, "lease": -100}, at_3, far, floors=at_3, otherwise={"used": 40})
    assert store.record_usage(_usage("r1"), [settle]) is True
    assert store.read("q") == {"used": 40, "lease": 0, "epoch": 3}
    # The lease was taken back meanwhile (the epoch moved on): the settlement charges what was used instead.
    store.try_add_all([CounterChange("q", {"used": 100, "epoch": 1}, expires_at=far)])
    assert store.record_usage(_usage("r2"), [settle]) is True
    assert store.read("q") == {"used": 180, "lease": 0, "epoch": 4}
    # No otherwise: nothing is added.
    bare = CounterChange("q", {"used": -1000}, at_3, far, floors=at_3)
    assert store.record_usage(_usage("r3"), [bare]) is True
    assert store.read("q") == {"used": 180, "lease": 0, "epoch": 4}


def test_record_usage_is_idempotent(store: Store) -> None:
    rec = _usage("r1", cached=True, latency_ms=3.25, cost=0.000123)
    assert store.record_usage(rec) is True
    assert store.get_usage("t1", "r1") == rec
    assert store.record_usage(dataclasses.replace(rec, prompt_tokens=999, model="other")) is False
    assert store.get_usage("t1", "r1") == rec
    assert store.get_usage("t1", "nope") is None
    assert store.get_usage("t2", "r1") is None  # another tenant's record is not found by its id
    [agg] = store.daily_usage(None, "2024-03-10", "2024-03-10")
    assert agg == UsageAggregate("t1", "2024-03-10", "small", 1, 10, 5, 1, 0.000123)


def test_daily_aggregates_group_per_tenant_day_and_model(store: Store) -> None:
    midnight = datetime(2024, 3, 11, tzinfo=UTC).timestamp()
    records = [
        _usage("a", prompt_tokens=1, completion_tokens=2, cost=0.5),
        _usage("b", prompt_tokens=10, completion_tokens=20, cached=True, cost=0.25),
        _usage("c", model="big", prompt_tokens=100, completion_tokens=0, cost=1.0),
        _usage("d", created_at=midnight - 0.001, prompt_tokens=7),  # still the 10th, UTC
        _usage("e", created_at=midnight, prompt_tokens=3, cached=True),  # the 11th
        _usage("f", tenant_id="t2", prompt_tokens=4),
    ]
    for r in records:
        assert store.record_usage(r) is True
    got = store.daily_usage(None, "2024-03-01", "2024-03-31")
    assert [(a.tenant_id, a.day, a.model) for a in got] == [
        ("t1", "2024-03-10", "big"),
        ("t1", "2024-03-10", "small"),
        ("t2", "2024-03-10", "small"),
        ("t1", "2024-03-11", "small"),
    ]
    small = got[1]
    assert (small.requests, small.prompt_tokens, small.completion_tokens, small.cached_requests) == (
        3,
        18,
        27,
        1,
    )
    assert small.cost == pytest.approx(1.0)
    assert got[3] == UsageAggregate("t1", "2024-03-11", "small", 1, 3, 5, 1, 0.25)
    assert [a.day for a in store.daily_usage("t1", "2024-03-11", "2024-03-11")] == ["2024-03-11"]
    assert [a.tenant_id for a in store.daily_usage("t2", "2024-03-01", "2024-03-31")] == ["t2"]
    assert store.daily_usage(None, "2024-03-12", "2024-04-01") == []
    assert len(store.daily_usage("t1", "2024-03-10", "2024-03-10")) == 2


def test_list_usage_filters_by_tenant_and_half_open_window(store: Store) -> None:
    for i, tenant in enumerate(["t1", "t2", "t1", "t1", "t2"]):
        store.record_usage(_usage(f"r{4 - i}", tenant_id=tenant, created_at=T0 + i))
    ids = [r.request_id for r in store.list_usage(None, T0, T0 + 100)]
    assert ids == ["r4", "r3", "r2", "r1", "r0"]  # ordered by created_at, not by id
    assert [r.request_id for r in store.list_usage("t1", T0, T0 + 100)] == ["r4", "r2", "r1"]
    assert [r.request_id for r in store.list_usage("t2", T0, T0 + 100)] == ["r3", "r0"]
    assert [r.request_id for r in store.list_usage(None, T0 + 1, T0 + 3)] == ["r3", "r2"]
    assert [r.request_id for r in store.list_usage("t1", T0 + 1, T0 + 3)] == ["r2"]
    assert [r.request_id for r in store.list_usage(None, T0, T0 + 100, limit=2)] == ["r4", "r3"]
    assert store.list_usage("t9", T0, T0 + 100) == []
    assert store.list_usage(None, T0 + 50, T0 + 100) == []
    assert all(isinstance(r.cached, bool) for r in store.list_usage(None, T0, T0 + 100))


# -- cache ------------------------------------------------------------------------------------------


def test_cache_round_trip_overwrite_and_expiry(store: Store) -> None:
    assert store.cache_get("t1", "k", T0) is None
    store.cache_put("t1", "k", b"\x00value\xff", T0 + 10)
    assert store.cache_get("t1", "k", T0) == b"\x00value\xff"
    assert store.cache_get("t1", "k", T0 + 9.999) == b"\x00value\xff"
    assert store.cache_get("t1", "k", T0 + 10) is None  # expired at expires_at
    assert store.cache_get("t1", "k", T0 + 11) is None
    store.cache_put("t1", "k", b"new", T0 + 100)
    assert store.cache_get("t1", "k", T0 + 50) == b"new"
    assert store.cache_get("t2", "k", T0 + 50) is None  # entries are kept per tenant
    store.cache_put("t1", "empty", b"", T0 + 100)
    assert store.cache_get("t1", "empty", T0) == b""


# -- models -----------------------------------------------------------------------------------------


def test_model_round_trip_list_and_delete(store: Store) -> None:
    small = _model("small")
    emb = _model("emb", kind="embedding", fallbacks=(), backend={"type": "onnx"}, metadata={})
    store.put_model(small)
    store.put_model(emb)
    got = store.get_model("small")
    assert got == small
    assert got is not None
    assert isinstance(got.fallbacks, tuple)
    assert got.cost(1000, 1000) == pytest.approx(0.3)
    assert store.list_models() == [emb, small]
    store.put_model(dataclasses.replace(small, version="4"))
    updated = store.get_model("small")
    assert updated is not None
    assert updated.version == "4"
    assert store.delete_model("small") is True
    assert store.delete_model("small") is False
    assert store.get_model("small") is None
    assert store.list_models() == [emb]


def test_stored_model_is_not_aliased_to_the_callers_dicts(store: Store) -> None:
    spec = _model("m")
    store.put_model(spec)
    spec.backend["url"] = "http://changed"
    got = store.get_model("m")
    assert got is not None
    assert got.backend["url"] == "http://x"


# -- signing keys -----------------------------------------------------------------------------------


def test_signing_keys_round_trip_and_retire(store: Store) -> None:
    assert store.list_signing_keys() == []
    new = SigningKey("kid2", b"-----PRIVATE 2-----\n", b"-----PUBLIC 2-----\n", created_at=T0 + 10)
    old = SigningKey("kid1", b"-----PRIVATE 1-----\n", b"-----PUBLIC 1-----\n", created_at=T0)
    store.put_signing_key(new)
    store.put_signing_key(old)
    assert store.list_signing_keys() == [old, new]
    retired = dataclasses.replace(old, retired_at=T0 + 10)
    store.put_signing_key(retired)
    assert store.list_signing_keys() == [retired, new]


# -- SQLite only ------------------------------------------------------------------------------------


def test_sqlite_data_survives_reopening(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "nested.db"
    first = SQLiteStore(path, clock=clock)
    first.put_tenant(Tenant("t1", "T", T0))
    first.try_add("w", {"n": 2}, {"n": 5}, T0 + 60)
    first.record_usage(_usage("r1"))
    first.close()
    second = SQLiteStore(str(path), clock=clock)  # opening again re-runs the (idempotent) schema
    assert second.get_tenant("t1") == Tenant("t1", "T", T0)
    assert second.read("w") == {"n": 2}
    assert second.record_usage(_usage("r1")) is False
    assert second.daily_usage("t1", "2024-03-10", "2024-03-10")[0].requests == 1
    second.close()


def test_sqlite_failed_transaction_rolls_back_and_the_store_stays_usable(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adapters.local import sqlite_store

    store = SQLiteStore(tmp_path / "s.db", clock=clock)

    # The daily aggregate's statement fails, after the usage row was inserted in the same transaction.
    monkeypatch.setattr(sqlite_store, "_ADD_DAILY", "INSERT INTO no_such_table VALUES (?, ?, ?, ?, ?, ?, ?)")
    with pytest.raises(sqlite3.OperationalError):
        store.record_usage(_usage("r1"))
    monkeypatch.undo()
    assert store.get_usage("t1", "r1") is None
    assert store.record_usage(_usage("r1")) is True
    assert store.daily_usage("t1", "2024-03-10", "2024-03-10")[0].requests == 1
    store.close()
