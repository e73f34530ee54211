"""GET /v1/usage: the caller's own tenant, by day and model, with totals and cost."""

from __future__ import annotations

import calendar
import time
from typing import Any

import pytest

from core.errors import BackendError
from tests.fakes import Harness, error_of, json_of

GEN = {"model": "fake-gen", "prompt": "a b c", "max_tokens": 2, "temperature": 0}  # 3 + 2 tokens


def usage(h: Harness, key: str | None = None, **query: str) -> dict[str, Any]:
    resp = h.call("GET", "/v1/usage", key=key, query=query)
    assert resp.status == 200, resp.body
    out: dict[str, Any] = json_of(resp)
    return out


def today(h: Harness) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(h.clock.now()))


def test_empty_usage(harness: Harness) -> None:
    out = usage(harness)
    assert out["object"] == "usage"
    assert out["tenant_id"] == harness.tenant.id
    assert out["group_by"] == "day,model"
    assert (out["start"], out["end"]) == ("2026-09-01", "2026-09-30")  # the current month
    assert out["data"] == []
    assert out["totals"] == {
        "requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cached_requests": 0, "cost": 0.0, "total_tokens": 0,
    }  # fmt: skip


def test_usage_by_day_and_model_with_cost_and_cache_hits(harness: Harness) -> None:
    assert harness.call_json("POST", "/v1/completions", GEN).status == 200
    assert harness.call_json("POST", "/v1/completions", GEN).status == 200  # cache hit: free
    assert harness.call_json("POST", "/v1/embeddings", {"model": "fake-emb", "input": "x y z w"}).status == 200
    out = usage(harness)
    rows = {r["model"]: r for r in out["data"]}
    assert set(rows) == {"fake-gen", "fake-emb"}
    gen = rows["fake-gen"]
    assert gen["day"] == today(harness)
    assert (gen["requests"], gen["cached_requests"]) == (2, 1)
    assert (gen["prompt_tokens"], gen["completion_tokens"], gen["total_tokens"]) == (3, 2, 5)
    assert gen["cost"] == pytest.approx(3 * 1.0 / 1000 + 2 * 2.0 / 1000)
    assert "tenant_id" not in gen
    emb = rows["fake-emb"]
    assert (emb["requests"], emb["prompt_tokens"], emb["completion_tokens"]) == (1, 4, 0)
    assert out["totals"]["requests"] == 3
    assert out["totals"]["total_tokens"] == 9
    assert out["totals"]["cost"] == pytest.approx(gen["cost"])


def test_group_by_variants(harness: Harness) -> None:
    harness.call_json("POST", "/v1/completions", GEN)
    harness.clock.advance(86_400)
    harness.call_json("POST", "/v1/completions", {**GEN, "temperature": 1})
    harness.call_json("POST", "/v1/embeddings", {"model": "fake-emb", "input": "x"})
    by_day = usage(harness, group_by="day")["data"]
    assert [(r["day"], r["requests"]) for r in by_day] == [("2026-09-21", 1), ("2026-09-22", 2)]
    assert all("model" not in r for r in by_day)
    by_model = usage(harness, group_by="model")["data"]
    assert sorted((r["model"], r["requests"]) for r in by_model) == [("fake-emb", 1), ("fake-gen", 2)]
    assert all("day" not in r for r in by_model)
    assert len(usage(harness, group_by="day,model")["data"]) == 3
    (single,) = usage(harness, group_by="none")["data"]
    assert single["requests"] == 3
    assert set(single) == {"requests", "prompt_tokens", "completion_tokens", "total_tokens", "cached_requests", "cost"}


def test_date_range_is_inclusive_and_defaults_to_this_month(harness: Harness) -> None:
    harness.call_json("POST", "/v1/completions", GEN)  # 2026-09-21
    harness.clock.t = calendar.timegm((2026, 10, 2, 12, 0, 0))
    harness.call_json("POST", "/v1/completions", {**GEN, "temperature": 1})  # 2026-10-02
    assert usage(harness)["totals"]["requests"] == 1  # October only
    assert usage(harness, start="2026-09-01")["totals"]["requests"] == 2
    assert usage(harness, start="2026-09-21", end="2026-09-21")["totals"]["requests"] == 1
    assert usage(harness, start="2026-09-22", end="2026-10-01")["totals"]["requests"] == 0


def test_failed_calls_are_counted_but_cost_nothing(harness: Harness) -> None:
    harness.backend.failures.append(BackendError("broken", status=400))
    assert harness.call_json("POST", "/v1/completions", GEN).status == 400
    totals = usage(harness)["totals"]
    assert totals["requests"] == 1
    assert (totals["total_tokens"], totals["cost"]) == (0, 0.0)


def test_any_key_of_the_tenant_may_read_its_usage_including_by_token(harness: Harness) -> None:
    harness.call_json("POST", "/v1/completions", GEN)
    _, embed_only = harness.new_tenant("e", scopes=frozenset({"embed"}))
    assert usage(harness, key=embed_only)["totals"]["requests"] == 0  # its own (empty) tenant
    token = json_of(harness.call("POST", "/auth/token"))["access_token"]
    assert usage(harness, key=token)["totals"]["requests"] == 1


def test_usage_needs_credentials(harness: Harness) -> None:
    resp = harness.call("GET", "/v1/usage", headers={"authorization": ""})
    assert resp.status == 401
    assert error_of(resp)["code"] == "missing_credentials"
