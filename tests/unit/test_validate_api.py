"""POST /v1/validate through the gateway: shapes, refusals, scope, metering of model-backed metrics, gauges."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from core.domain import Limits, ModelSpec
from core.errors import BackendError
from core.validation.report import DEFAULT_METRICS, MAX_CANDIDATES
from tests.fakes import FakeBackend, Harness, error_of, json_of, make_harness

CANDIDATES = ["the cat sat on the mat", "a dog ran in the park", "mail me at jo@example.com"]
REFERENCES = ["the cat is on the mat", "a dog runs in a park", "write to me"]


@dataclass
class ScoringBackend(FakeBackend):
    """A fake backend that can also score text: -1 nat per word (perplexity e)."""

    scored: list[str] = field(default_factory=list)

    async def token_logprobs(self, route: Mapping[str, Any], text: str) -> list[float]:
        await self._maybe_fail()
        self.scored.append(text)
        return [-1.0] * len(text.split())


@dataclass
class Gauges:
    seen: list[tuple[str, float, dict[str, str]]] = field(default_factory=list)

    def incr(self, name: str, value: float = 1.0, **dims: str) -> None:
        return None

    def observe(self, name: str, value: float, **dims: str) -> None:
        self.seen.append((name, value, dims))


SCORER = ModelSpec(id="scorer", kind="generation", backend={"type": "local", "name": "scorer"}, max_retries=0)


@pytest.fixture
def h() -> Harness:
    return make_harness()


def validate_key(h: Harness, limits: Limits | None = None) -> str:
    _, key = h.new_tenant("validator", limits=limits, scopes=frozenset({"validate"}))
    return key


def post(h: Harness, payload: dict[str, Any], key: str | None = None) -> Any:
    return h.call_json("POST", "/v1/validate", payload, key=key or validate_key(h))


def test_default_metrics_without_references(h: Harness) -> None:
    resp = post(h, {"candidates": CANDIDATES})
    assert resp.status == 200, resp.body
    out = json_of(resp)
    assert out["object"] == "validation"
    assert list(out["metrics"]) == list(DEFAULT_METRICS)
    for name, scores in out["metrics"].items():
        assert set(scores) == {"corpus", "items"}
        assert len(scores["items"]) == len(CANDIDATES), name
    assert out["metrics"]["length"]["items"] == [6, 6, 6]
    assert out["pii"][2] == [{"kind": "email", "start": 11, "end": 25, "masked": "j***@e***.com"}]
    assert out["pii"][0] == []
    assert "jo@example.com" not in resp.body.decode()
    summary = out["summary"]
    assert summary["candidates"] == 3
    assert summary["references"] is False
    assert summary["metrics"] == list(DEFAULT_METRICS)
    assert summary["scores"]["pii"] == pytest.approx(1 / 3)
    assert summary["flags"] == ["pii: 1 of 3 candidates contain personal data"]
    assert out["usage"] is None
    assert h.usage() == []  # nothing model-backed ran: nothing metered


def test_reference_metrics_single_and_multiple_references(h: Harness) -> None:
    key = validate_key(h)
    out = json_of(post(h, {"candidates": CANDIDATES, "references": REFERENCES}, key))
    assert {"bleu", "chrf", "rougeL"} <= set(out["metrics"])
    assert out["summary"]["references"] is True
    assert isinstance(out["metrics"]["bleu"]["corpus"], float)
    multi = [[r, r.upper()] for r in REFERENCES]
    resp = post(h, {"candidates": CANDIDATES, "references": multi, "metrics": ["bleu", "rouge1", "memorisation"]}, key)
    assert resp.status == 200, resp.body
    out = json_of(resp)
    assert list(out["metrics"]) == ["bleu", "rouge1", "memorisation"]
    assert out["pii"] is None
    assert out["metrics"]["memorisation"]["corpus"]["ngram"] == 8


def test_gauges_for_every_metric(h: Harness) -> None:
    gauges = Gauges()
    h.gateway.metrics = gauges
    resp = post(h, {"candidates": CANDIDATES, "references": REFERENCES, "metrics": ["bleu", "length", "pii"]})
    assert resp.status == 200
    observed = {dims["metric"]: value for name, value, dims in gauges.seen if name == "validation_score"}
    assert set(observed) == {"bleu", "length", "pii"}
    assert observed["length"] == pytest.approx(6.0)


@pytest.mark.parametrize(
    ("payload", "param", "code"),
    [
        ({"candidates": ["x"], "metrics": ["bleu", "vibes"]}, "metrics", "unknown_metric"),
        ({"candidates": ["x"], "metrics": ["chrf"]}, "references", "references_required"),
        ({"candidates": ["x"], "metrics": ["embedding_similarity"]}, "references", "references_required"),
        ({"candidates": ["x"], "metrics": ["memorisation"]}, "training_texts", "training_texts_required"),
        ({"candidates": ["x"], "metrics": ["fluency"]}, "fluency_model", "fluency_model_required"),
        ({"candidates": ["x", "y"], "references": ["only one"]}, "references", "invalid_value"),
        ({"candidates": ["x"], "references": [[]]}, "references", "invalid_value"),
        ({"candidates": ["x"], "references": [5]}, "references[0]", "invalid_value"),
        ({"candidates": ["x"] * (MAX_CANDIDATES + 1)}, "candidates", "invalid_value"),
        ({"candidates": []}, "candidates", "invalid_value"),
        ({"candidates": ["x" * 20_001]}, "candidates[0]", "invalid_value"),
        ({"candidates": ["x"], "ngram": 3}, "ngram", "invalid_value"),
        ({"candidates": ["x"], "near_duplicate_threshold": 1.5}, "near_duplicate_threshold", "invalid_value"),
        ({"candidates": ["x"], "candidate": ["typo"]}, "candidate", "invalid_value"),
    ],
)
def test_bad_requests(h: Harness, payload: dict[str, Any], param: str, code: str) -> None:
    resp = post(h, payload)
    assert resp.status == 400, resp.body
    err = error_of(resp)
    assert (err["param"], err["code"]) == (param, code), err


def test_unknown_metric_lists_the_known_ones(h: Harness) -> None:
    err = error_of(post(h, {"candidates": ["x"], "metrics": ["vibes"]}))
    assert "'vibes'" in err["message"]
    for known in ("bleu", "chrf", "rougeL", "self_bleu", "pii", "fluency"):
        assert known in err["message"]


def test_needs_the_validate_scope(h: Harness) -> None:
    resp = h.call_json("POST", "/v1/validate", {"candidates": ["x"]})  # the default key: generate + embed
    assert resp.status == 403
    assert error_of(resp)["code"] == "insufficient_scope"
    assert h.call_json("POST", "/v1/validate", {"candidates": ["x"]}, key=h.admin_key).status == 200


def test_embedding_similarity_is_metered_and_cached(h: Harness) -> None:
    key = validate_key(h)
    payload = {
        "candidates": ["a b c", "d e"],
        "references": [["a b c", "x"], "d e f g"],
        "metrics": ["embedding_similarity"],
        "embedding_model": "fake-emb",
    }
    resp = post(h, payload, key)
    assert resp.status == 200, resp.body
    out = json_of(resp)
    items = out["metrics"]["embedding_similarity"]["items"]
    assert items[0] == pytest.approx(1.0)  # identical text, identical vector
    assert 0 < items[1] < 1
    (record,) = h.usage("ten_validator")
    assert record.request_id.endswith(":embed")
    assert (record.endpoint, record.model, record.cached) == ("validate", "fake-emb", False)
    # Distinct texts once each: "a b c", "d e", "x", "d e f g" -> 3 + 2 + 1 + 4 words.
    assert record.prompt_tokens == 10
    assert out["usage"] == {"prompt_tokens": 10, "completion_tokens": 0, "total_tokens": 10}
    again = json_of(post(h, payload, key))
    assert again["usage"]["total_tokens"] == 0  # served from the embeddings cache, charged nothing
    assert sorted(r.cached for r in h.usage("ten_validator")) == [False, True]


def test_embedding_similarity_is_rate_limited(h: Harness) -> None:
    key = validate_key(h, Limits(tokens_per_minute=5))
    payload: dict[str, Any] = {"candidates": ["a b c"], "references": ["a b c d e f"], "embedding_model": "fake-emb"}
    payload["metrics"] = ["embedding_similarity"]
    resp = post(h, payload, key)
    assert resp.status == 429
    assert error_of(resp)["code"] == "rate_limit_exceeded"


def test_embedding_model_must_exist_and_embed(h: Harness) -> None:
    base = {"candidates": ["a"], "references": ["b"], "metrics": ["embedding_similarity"]}
    assert post(h, {**base, "embedding_model": "nope"}).status == 404
    assert error_of(post(h, {**base, "embedding_model": "fake-gen"}))["code"] == "model_not_supported"


def test_fluency_unavailable_when_the_backend_cannot_score(h: Harness) -> None:
    resp = post(h, {"candidates": ["a b"], "metrics": ["fluency"], "fluency_model": "fake-gen"})
    assert resp.status == 400
    err = error_of(resp)
    assert (err["code"], err["param"]) == ("metric_unavailable", "fluency_model")
    assert h.usage() == []


def test_fluency_is_scored_and_metered(h: Harness) -> None:
    backend = ScoringBackend()
    h.add_model(SCORER, backend)
    key = validate_key(h, Limits(tokens_per_minute=1000))
    resp = post(h, {"candidates": ["one two three", "", "four five"], "fluency_model": "scorer"}, key)
    assert resp.status == 200, resp.body
    out = json_of(resp)
    assert "fluency" in out["metrics"]  # named fluency_model: part of the default set
    fl = out["metrics"]["fluency"]
    assert fl["items"] == [pytest.approx(math.e), None, pytest.approx(math.e)]
    assert fl["corpus"] == pytest.approx(math.e)
    assert backend.scored == ["one two three", "four five"]  # empty texts are not sent
    (record,) = h.usage("ten_validator")
    assert record.request_id.endswith(":fluency")
    assert (record.endpoint, record.model, record.status) == ("validate", "scorer", 200)
    assert record.prompt_tokens == (3 + 1) + (2 + 1)  # each text's tokens + the conditioning token
    assert out["usage"]["prompt_tokens"] == 7
    assert resp.headers["x-ratelimit-limit-tokens"] == "1000"
    # The reservation was settled to what was charged.
    minute = int(h.clock.now() // 60)
    assert h.store.read(f"rl|ten_validator|{minute}")["tok"] == 7


def test_fluency_failure_charges_nothing(h: Harness) -> None:
    backend = ScoringBackend(failures=[BackendError("boom", status=502)])
    h.add_model(SCORER, backend)
    key = validate_key(h, Limits(tokens_per_minute=1000))
    resp = post(h, {"candidates": ["one two"], "metrics": ["fluency"], "fluency_model": "scorer"}, key)
    assert resp.status == 502
    (record,) = h.usage("ten_validator")
    assert (record.status, record.prompt_tokens) == (502, 0)
    assert h.store.read(f"rl|ten_validator|{int(h.clock.now() // 60)}")["tok"] == 0


def test_fluency_is_limited_in_size(h: Harness) -> None:
    h.add_model(SCORER, ScoringBackend())
    resp = post(h, {"candidates": ["x"] * 300, "metrics": ["fluency"], "fluency_model": "scorer"})
    assert resp.status == 400
    assert error_of(resp)["code"] == "too_many_candidates"


def test_openapi_lists_the_route(h: Harness) -> None:
    doc = json_of(h.call("GET", "/openapi.json"))
    op = doc["paths"]["/v1/validate"]["post"]
    assert op["x-required-scope"] == "validate"
    assert "ValidateRequest" in doc["components"]["schemas"]
