"""Validation with the real local models: fluency under SmolLM2, embedding similarity with all-MiniLM-L6-v2."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.local.llama_backend import LlamaCppBackend
from adapters.local.memory_store import MemoryStore
from core.app import Gateway
from core.auth import api_keys
from core.clock import FixedClock
from core.domain import Tenant
from core.http import Request
from core.ports import LogProbScorer
from core.validation.fluency import perplexity

pytestmark = pytest.mark.model

FLUENT = [
    "The children walked to school together on a sunny morning in early spring.",
    "She opened the window to let the fresh air into the small kitchen.",
    "After dinner, we sat by the fire and talked about our plans for the summer.",
]


def shuffled(text: str, seed: int) -> str:
    words = text.rstrip(".").split()
    random.Random(seed).shuffle(words)
    return " ".join(words) + "."


@pytest.fixture(scope="module")
def llm() -> Iterator[LlamaCppBackend]:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (textnlp[local])")
    backend = LlamaCppBackend()
    yield backend
    backend.close()


def test_fluent_english_has_lower_perplexity_than_shuffled_words(llm: LlamaCppBackend) -> None:
    assert isinstance(llm, LogProbScorer)

    async def score(texts: list[str]) -> list[float | None]:
        return [perplexity(await llm.token_logprobs({"type": "local"}, t)) for t in texts]

    fluent = asyncio.run(score(FLUENT))
    scrambled = asyncio.run(score([shuffled(t, i) for i, t in enumerate(FLUENT)]))
    for good, bad in zip(fluent, scrambled, strict=True):
        assert good is not None
        assert bad is not None
        assert good * 5 < bad, (good, bad)
    assert asyncio.run(llm.token_logprobs({"type": "local"}, "")) == []


def test_every_token_is_scored_and_long_texts_in_windows(llm: LlamaCppBackend) -> None:
    text = " ".join(FLUENT * 25)  # ~ 450 words, more than the scorer's 512-token context
    logprobs = asyncio.run(llm.token_logprobs({"type": "local"}, text))
    tokens = llm.load().tokenize(text.encode(), add_bos=False, special=False)
    assert len(tokens) > 512
    assert len(logprobs) == len(tokens)
    assert all(lp <= 0 for lp in logprobs)
    head = asyncio.run(llm.token_logprobs({"type": "local"}, FLUENT[0]))
    assert logprobs[: len(head) - 1] == pytest.approx(head[:-1], abs=1e-3)  # the same prefix, the same scores
    # Repeated text becomes predictable: the later windows see the repetition.
    later, first = perplexity(logprobs[-200:]), perplexity(head)
    assert later is not None
    assert first is not None
    assert later < first


@pytest.fixture(scope="module")
def gateway() -> tuple[Gateway, str]:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (textnlp[local])")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (textnlp[local])")
    from functions.local.backends import LocalBackends
    from functions.local.bootstrap import DEFAULT_MODELS

    clock = FixedClock()
    store = MemoryStore(clock=clock.now)
    for spec in DEFAULT_MODELS:
        store.put_model(spec)
    tenant = Tenant(id="ten_v", name="v", created_at=clock.now())
    store.put_tenant(tenant)
    key, record = api_keys.mint(tenant.id, "k", frozenset({"validate"}), clock.now())
    store.put_key(record)
    return Gateway(store, LocalBackends(), clock=clock), key


def test_validate_with_the_real_models(gateway: tuple[Gateway, str]) -> None:
    gw, key = gateway
    payload: dict[str, Any] = {
        "candidates": ["A man is playing a guitar on stage.", "Stock markets fell sharply on Monday."],
        "references": [["Someone performs music with a guitar."], ["A man is playing a guitar on stage."]],
        "metrics": ["embedding_similarity", "fluency", "bleu"],
        "fluency_model": "smollm2-135m-instruct",
    }
    request = Request("POST", "/v1/validate", {"authorization": f"Bearer {key}"}, {}, json.dumps(payload).encode())
    response = asyncio.run(gw.handle(request))
    assert response.status == 200, response.body
    out = json.loads(response.body)
    close, unrelated = out["metrics"]["embedding_similarity"]["items"]
    assert close > 0.5 > unrelated, (close, unrelated)
    assert all(p > 1 for p in out["metrics"]["fluency"]["items"])
    records = {r.request_id.rsplit(":", 1)[1]: r for r in gw.store.list_usage("ten_v", 0, float("inf"))}
    assert set(records) == {"embed", "fluency"}
    assert (records["embed"].model, records["fluency"].model) == ("all-minilm-l6-v2", "smollm2-135m-instruct")
    assert 0 < records["fluency"].prompt_tokens <= sum(len(c.encode()) + 1 for c in payload["candidates"])
    assert out["usage"]["prompt_tokens"] == records["embed"].prompt_tokens + records["fluency"].prompt_tokens


def test_cli_with_the_local_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (textnlp[local])")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (textnlp[local])")
    from functions.local.validate_cli import run

    rows = [{"text": FLUENT[0], "reference": FLUENT[0]}, {"text": shuffled(FLUENT[1], 1), "reference": "Unrelated."}]
    candidates = tmp_path / "c.jsonl"
    candidates.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "r.json"
    assert run([str(candidates), "--metrics", "embedding_similarity,fluency", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    similar, _ = report["metrics"]["embedding_similarity"]["items"]
    assert similar == pytest.approx(1.0, abs=1e-4)
    fluent, scrambled = report["metrics"]["fluency"]["items"]
    assert fluent < scrambled
    assert "fluency" in capsys.readouterr().out
