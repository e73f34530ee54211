"""Response cache: deterministic requests only, per tenant, L1 (per container) in front of L2 (the store)."""

from __future__ import annotations

from typing import Any

import pytest

from core.app import Gateway
from core.cache import CacheKey, ResponseCache, TTLCache, cache_key
from core.clock import FixedClock
from core.domain import Limits
from core.errors import BackendError
from core.settings import GatewaySettings
from tests.fakes import Harness, json_of, make_harness

TTL = GatewaySettings().cache_ttl_s


class SpyMetrics:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, str]]] = []

    def incr(self, name: str, value: float = 1.0, **dims: str) -> None:
        self.events.append((name, dims))

    def observe(self, name: str, value: float, **dims: str) -> None:
        return None

    def layers(self) -> list[str]:
        return [d.get("layer", "miss") for n, d in self.events if n in ("cache_hits_total", "cache_misses_total")]


def body(**overrides: Any) -> dict[str, Any]:
    return {"model": "fake-gen", "prompt": "a b c d", "max_tokens": 3, "temperature": 0, **overrides}


def complete(h: Harness, key: str | None = None, gateway: Gateway | None = None, **overrides: Any) -> dict[str, Any]:
    if gateway is None:
        resp = h.call_json("POST", "/v1/completions", body(**overrides), key=key)
    else:
        import asyncio
        import json

        from core.http import Request

        req = Request(
            "POST",
            "/v1/completions",
            {"authorization": f"Bearer {key or h.key}"},
            {},
            json.dumps(body(**overrides)).encode(),
        )
        resp = asyncio.run(gateway.handle(req))
    assert resp.status == 200, resp.body
    out: dict[str, Any] = json_of(resp)
    assert resp.headers["x-textnlp-cache"] == ("hit" if out["cached"] else "miss")
    return out


def other_container(h: Harness, metrics: SpyMetrics | None = None, **settings: Any) -> Gateway:
    """A second gateway on the same store, as another container would run it."""
    assert h.resolver is not None
    return Gateway(h.store, h.resolver, clock=h.clock, metrics=metrics, settings=GatewaySettings(**settings))


# -- TTLCache -------------------------------------------------------------------------------------------


def test_ttl_cache_expires_entries() -> None:
    clock = FixedClock()
    cache: TTLCache[str, int] = TTLCache(10, 5.0, clock)
    cache.put("a", 1)
    clock.advance(4.9)
    assert cache.lookup("a") == (True, 1)
    clock.advance(0.1)
    assert cache.lookup("a") == (False, None)
    cache.put("b", 2, ttl_s=1.0)
    clock.advance(1.0)
    assert cache.lookup("b") == (False, None)


def test_ttl_cache_caches_none_as_a_value() -> None:
    cache: TTLCache[str, int | None] = TTLCache(10, 5.0, FixedClock())
    cache.put("missing", None)
    assert cache.lookup("missing") == (True, None)
    assert cache.lookup("other") == (False, None)


def test_ttl_cache_evicts_the_least_recently_used() -> None:
    evictions: list[int] = []
    cache: TTLCache[str, int] = TTLCache(2, 60.0, FixedClock(), on_evict=lambda: evictions.append(1))
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.lookup("a") == (True, 1)  # a is now the most recent
    cache.put("c", 3)
    assert cache.lookup("b") == (False, None)
    assert cache.lookup("a") == (True, 1)
    assert cache.lookup("c") == (True, 3)
    assert len(cache) == 2
    assert evictions == [1]
    cache.pop("a")
    assert cache.lookup("a") == (False, None)


# -- keys -----------------------------------------------------------------------------------------------


def test_cache_key_separates_tenants_models_kinds_params_and_inputs() -> None:
    base = cache_key("t1", "m", "completions", {"a": 1, "b": 2}, ["x"])
    assert cache_key("t1", "m", "completions", {"b": 2, "a": 1}, ["x"]) == base  # order-insensitive
    for other in (
        cache_key("t2", "m", "completions", {"a": 1, "b": 2}, ["x"]),
        cache_key("t1", "m2", "completions", {"a": 1, "b": 2}, ["x"]),
        cache_key("t1", "m", "generate", {"a": 1, "b": 2}, ["x"]),
        cache_key("t1", "m", "completions", {"a": 1, "b": 3}, ["x"]),
        cache_key("t1", "m", "completions", {"a": 1, "b": 2}, ["y"]),
    ):
        assert other != base


# -- what is cached -------------------------------------------------------------------------------------


def test_temperature_zero_is_cached_and_a_hit_costs_no_backend_call(harness: Harness) -> None:
    first = complete(harness)
    assert first["cached"] is False
    assert harness.backend.calls == 1
    second = complete(harness)
    assert harness.backend.calls == 1
    assert second["cached"] is True
    assert second["choices"] == first["choices"]
    assert second["usage"] == first["usage"]
    miss, hit = sorted(harness.usage(), key=lambda r: r.cached)
    assert (miss.cached, miss.total_tokens) == (False, 7)
    assert (hit.cached, hit.total_tokens, hit.cost) == (True, 0, 0.0)


def test_a_seed_makes_a_request_deterministic(harness: Harness) -> None:
    complete(harness, temperature=0.9, seed=42)
    assert complete(harness, temperature=0.9, seed=42)["cached"] is True
    assert complete(harness, temperature=0.9, seed=43)["cached"] is False
    assert harness.backend.calls == 2


def test_sampled_requests_are_never_cached(harness: Harness) -> None:
    for _ in range(3):
        assert complete(harness, temperature=0.7)["cached"] is False
    assert harness.backend.calls == 3
    assert harness.store._s.cache == {}


@pytest.mark.parametrize(
    "change", [{"max_tokens": 2}, {"prompt": "a b c e"}, {"stop": ["x"]}, {"top_p": 0.5}, {"n": 2}]
)
def test_any_parameter_change_is_a_different_entry(harness: Harness, change: dict[str, Any]) -> None:
    complete(harness)
    assert complete(harness, **change)["cached"] is False


def test_endpoints_do_not_share_entries(harness: Harness) -> None:
    complete(harness)
    resp = harness.call_json("POST", "/v1/generate", body())
    assert json_of(resp)["cached"] is False
    assert harness.backend.calls == 2


def test_keys_of_one_tenant_share_its_entries(harness: Harness) -> None:
    from core.auth import api_keys

    plain, record = api_keys.mint(harness.tenant.id, "two", frozenset({"generate"}), harness.clock.now())
    harness.store.put_key(record)
    complete(harness)
    assert complete(harness, key=plain)["cached"] is True


def test_different_tenants_never_share_entries(harness: Harness) -> None:
    _, b_key = harness.new_tenant("b")
    a_out = complete(harness)
    b_out = complete(harness, key=b_key)
    assert b_out["cached"] is False
    assert harness.backend.calls == 2
    assert complete(harness, key=b_key)["cached"] is True
    assert complete(harness)["cached"] is True
    assert a_out["choices"] == b_out["choices"]
    # Even another container, reading L2 only, keeps them apart.
    c_tenant, c_key = harness.new_tenant("c")
    assert complete(harness, key=c_key, gateway=other_container(harness))["cached"] is False
    assert {r.tenant_id for r in harness.usage() if r.cached} == {"ten_a", "ten_b"}
    assert c_tenant.id not in {r.tenant_id for r in harness.usage() if r.cached}


def test_a_failed_call_is_not_cached() -> None:
    h = make_harness()
    h.backend.failures.append(BackendError("bad", status=400))
    assert h.call_json("POST", "/v1/completions", body()).status == 400
    assert complete(h)["cached"] is False
    assert h.backend.calls == 2


def test_a_hit_charges_no_tokens_but_still_counts_as_a_request() -> None:
    h = make_harness(limits=Limits(requests_per_minute=10, tokens_per_minute=1000, token_quota=1000))
    complete(h)
    resp = h.call_json("POST", "/v1/completions", body())
    assert json_of(resp)["cached"] is True
    assert resp.headers["x-ratelimit-remaining-requests"] == "8"
    third = h.call_json("POST", "/v1/completions", body(temperature=1))
    used_before_third = 1000 - int(third.headers["x-ratelimit-remaining-tokens"]) - (len("a b c d") + 1 + 3)
    assert used_before_third == 7  # only the miss was charged


def test_cache_can_be_switched_off() -> None:
    h = make_harness(settings=GatewaySettings(cache_enabled=False))
    complete(h)
    assert complete(h)["cached"] is False
    assert h.backend.calls == 2


# -- L1 and L2 ------------------------------------------------------------------------------------------


def test_another_container_hits_l2_then_its_own_l1(harness: Harness) -> None:
    complete(harness)
    metrics = SpyMetrics()
    gw = other_container(harness, metrics)
    assert complete(harness, gateway=gw)["cached"] is True
    assert complete(harness, gateway=gw)["cached"] is True
    assert harness.backend.calls == 1
    assert metrics.layers() == ["l2", "l1"]


def test_an_entry_evicted_from_l1_is_found_in_l2(harness: Harness) -> None:
    metrics = SpyMetrics()
    gw = other_container(harness, metrics, cache_l1_size=1)
    complete(harness, gateway=gw)
    complete(harness, gateway=gw, prompt="other words")  # evicts the first from L1
    assert complete(harness, gateway=gw)["cached"] is True
    assert harness.backend.calls == 2
    assert metrics.layers() == ["miss", "miss", "l2"]
    assert ("cache_evictions_total", {"layer": "l1"}) in metrics.events


def test_entries_expire_after_the_ttl(harness: Harness) -> None:
    complete(harness)
    harness.clock.advance(TTL - 1)
    assert complete(harness)["cached"] is True
    harness.clock.advance(1)
    assert complete(harness)["cached"] is False
    assert harness.backend.calls == 2


def test_an_l1_copy_never_outlives_the_l2_entry(harness: Harness) -> None:
    complete(harness)  # written to L1 here and to L2 at t0
    harness.clock.advance(TTL - 10)
    gw = other_container(harness)
    assert complete(harness, gateway=gw)["cached"] is True  # copied from L2 into this container's L1
    harness.clock.advance(10)
    assert complete(harness, gateway=gw)["cached"] is False  # the entry is an hour old: gone everywhere
    assert harness.backend.calls == 2


def test_l1_expiry_then_l2_hit_after_another_container_refreshed_the_entry() -> None:
    """Two containers miss at once and both write; the first one's L1 copy expires before L2's entry."""
    from adapters.local.memory_store import MemoryStore

    clock = FixedClock()
    store = MemoryStore(clock=clock.now)
    m1 = SpyMetrics()
    first = ResponseCache(store, clock, m1, ttl_s=100)
    second = ResponseCache(store, clock, SpyMetrics(), ttl_s=100)
    key = CacheKey("t1", "k")
    first.put(key, b"v1")
    clock.advance(5)
    second.put(key, b"v2")  # the slower container's answer lands in L2 five seconds later
    assert first.get(key, "m") == b"v1"  # L1
    clock.advance(96)  # past the first copy's TTL, within the second's
    assert first.get(key, "m") == b"v2"  # L2
    assert first.get(key, "m") == b"v2"  # and L1 again, until L2's own expiry
    clock.advance(4)
    assert first.get(key, "m") is None
    assert m1.layers() == ["l1", "l2", "l1", "miss"]


def test_an_l2_entry_in_an_unknown_format_is_a_miss_not_an_error(harness: Harness) -> None:
    complete(harness)
    (key,) = harness.store._s.cache
    harness.store.cache_put(*key, b'[{"text": "written by an older version"}]', harness.clock.now() + 60)
    assert complete(harness, gateway=other_container(harness))["cached"] is False
    assert harness.backend.calls == 2


def test_custom_ttl_is_honoured() -> None:
    h = make_harness(settings=GatewaySettings(cache_ttl_s=30))
    complete(h)
    h.clock.advance(29)
    assert complete(h)["cached"] is True
    h.clock.advance(1)
    assert complete(h)["cached"] is False


# -- embeddings -----------------------------------------------------------------------------------------


def test_embeddings_are_cached_per_tenant_and_input(harness: Harness) -> None:
    req = {"model": "fake-emb", "input": ["one two", "three"]}
    first = harness.call_json("POST", "/v1/embeddings", req)
    second = harness.call_json("POST", "/v1/embeddings", req)
    assert (json_of(first)["cached"], json_of(second)["cached"]) == (False, True)
    assert second.headers["x-textnlp-cache"] == "hit"
    assert json_of(second)["data"] == json_of(first)["data"]
    assert harness.backend.calls == 1
    assert (
        json_of(harness.call_json("POST", "/v1/embeddings", {**req, "input": ["three", "one two"]}))["cached"] is False
    )
    _, b_key = harness.new_tenant("b")
    assert json_of(harness.call_json("POST", "/v1/embeddings", req, key=b_key))["cached"] is False
    assert harness.backend.calls == 3
    hit = [r for r in harness.usage() if r.cached]
    assert len(hit) == 1
    assert hit[0].total_tokens == 0
