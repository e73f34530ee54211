"""The real local models: SmolLM2-135M through llama-cpp-python and all-MiniLM-L6-v2 through onnxruntime."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterator

import pytest

from adapters.local.llama_backend import LlamaCppBackend
from adapters.local.onnx_embeddings import OnnxMiniLMBackend
from core.errors import BackendError
from core.inference import (
    ChatMessage,
    Generation,
    GenerationParams,
    Prompt,
    StreamEnd,
    StreamEvent,
    TextDelta,
)

pytestmark = pytest.mark.model

ROUTE = {"type": "local"}
FRANCE = Prompt(text="The capital of France is")
COLORS = Prompt(messages=(ChatMessage("user", "Name three colors."),))
GREEDY = GenerationParams(max_tokens=40, temperature=0)


@pytest.fixture(scope="module")
def llm() -> Iterator[LlamaCppBackend]:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (textnlp[local])")
    backend = LlamaCppBackend()
    backend.load()
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def minilm() -> OnnxMiniLMBackend:
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (textnlp[local])")
    backend = OnnxMiniLMBackend()
    backend.load()
    return backend


async def _collect(events: AsyncIterator[StreamEvent]) -> tuple[str, StreamEnd]:
    parts: list[str] = []
    end: StreamEnd | None = None
    async for event in events:
        assert end is None, "nothing may follow StreamEnd"
        if isinstance(event, TextDelta):
            parts.append(event.text)
        else:
            end = event
    assert end is not None
    return "".join(parts), end


# -- SmolLM2 -----------------------------------------------------------------------------------


def test_capital_of_france_is_paris(llm: LlamaCppBackend) -> None:
    out = asyncio.run(llm.generate(ROUTE, FRANCE, GenerationParams(max_tokens=8, temperature=0)))
    assert "Paris" in out.text
    assert out.finish_reason in ("stop", "length")


@pytest.mark.parametrize("prompt", [FRANCE, COLORS], ids=["text", "chat"])
def test_usage_is_exact(llm: LlamaCppBackend, prompt: Prompt) -> None:
    out = asyncio.run(llm.generate(ROUTE, prompt, GREEDY))
    assert out.prompt_tokens == llm.count(ROUTE, prompt)
    assert 0 < out.completion_tokens <= GREEDY.max_tokens
    # Against llama-cpp-python's own non-streamed accounting of the same request.
    model = llm.load()
    model.reset()
    if prompt.text is not None:
        assert out.prompt_tokens == len(model.tokenize(prompt.text.encode(), add_bos=True, special=True))
        ref = model.create_completion(prompt=prompt.text, max_tokens=40, temperature=0)
        ref_text = ref["choices"][0]["text"]
    else:
        messages = [{"role": m.role, "content": m.content} for m in prompt.messages]
        ref = model.create_chat_completion(messages=messages, max_tokens=40, temperature=0)
        ref_text = ref["choices"][0]["message"]["content"]
        content_tokens = len(model.tokenize(prompt.messages[0].content.encode(), add_bos=False))
        assert out.prompt_tokens > content_tokens + 4, "the chat template's tokens are counted"
    assert ref["usage"]["prompt_tokens"] == out.prompt_tokens
    assert ref["usage"]["completion_tokens"] == out.completion_tokens
    assert ref_text == out.text


def test_max_tokens_gives_length(llm: LlamaCppBackend) -> None:
    prompt = Prompt(text="Once upon a time, in a land far away, there lived")
    out = asyncio.run(llm.generate(ROUTE, prompt, GenerationParams(max_tokens=5, temperature=0)))
    assert out.finish_reason == "length"
    assert out.completion_tokens == 5
    assert out.text.strip()


@pytest.mark.parametrize("prompt", [FRANCE, COLORS], ids=["text", "chat"])
def test_stream_matches_generate(llm: LlamaCppBackend, prompt: Prompt) -> None:
    whole = asyncio.run(llm.generate(ROUTE, prompt, GREEDY))
    text, end = asyncio.run(_collect(llm.stream(ROUTE, prompt, GREEDY)))
    assert text == whole.text
    assert (end.finish_reason, end.prompt_tokens, end.completion_tokens) == (
        whole.finish_reason,
        whole.prompt_tokens,
        whole.completion_tokens,
    )


@pytest.mark.parametrize("question", ["Name three colours.", "Tell me about Paris.", "Write a haiku about the sea."])
def test_temperature_zero_gives_one_answer_whatever_ran_before(llm: LlamaCppBackend, question: str) -> None:
    """The same greedy request asked again at once, after another prompt, streamed or not: one answer.

    Asked twice in a row, the second call would reuse the first's KV cache and evaluate only the last
    prompt token, which on the portable AVX2 build changed the answer to the first two questions.
    """
    prompt = Prompt(messages=(ChatMessage("user", question),))
    params = GenerationParams(max_tokens=48, temperature=0)
    first = asyncio.run(llm.generate(ROUTE, prompt, params)).text
    again = asyncio.run(llm.generate(ROUTE, prompt, params)).text
    streamed, _ = asyncio.run(_collect(llm.stream(ROUTE, prompt, params)))
    asyncio.run(llm.generate(ROUTE, COLORS, GenerationParams(max_tokens=8, temperature=0.9)))
    after_other = asyncio.run(llm.generate(ROUTE, prompt, params)).text
    assert [again, streamed, after_other] == [first] * 3


def test_stop_sequence_ends_the_text(llm: LlamaCppBackend) -> None:
    params = GenerationParams(max_tokens=40, temperature=0, stop=(".",))
    out = asyncio.run(llm.generate(ROUTE, FRANCE, params))
    assert "." not in out.text
    assert out.finish_reason == "stop"
    text, end = asyncio.run(_collect(llm.stream(ROUTE, FRANCE, params)))
    assert (text, end.completion_tokens) == (out.text, out.completion_tokens)


def test_fixed_seed_reproduces(llm: LlamaCppBackend) -> None:
    def sample(seed: int) -> str:
        params = GenerationParams(max_tokens=30, temperature=0.8, seed=seed)
        return asyncio.run(llm.generate(ROUTE, COLORS, params)).text

    first = sample(1234)
    assert sample(1234) == first
    assert len({first, sample(1), sample(2), sample(3)}) > 1, "the seed should matter"


def test_prompt_longer_than_context_is_400(llm: LlamaCppBackend) -> None:
    prompt = Prompt(text="word " * 3000)
    with pytest.raises(BackendError) as caught:
        asyncio.run(llm.generate(ROUTE, prompt, GREEDY))
    assert (caught.value.status, caught.value.code, caught.value.type) == (
        400,
        "context_length_exceeded",
        "invalid_request_error",
    )
    with pytest.raises(BackendError) as streamed:
        asyncio.run(_collect(llm.stream(ROUTE, prompt, GREEDY)))
    assert streamed.value.code == "context_length_exceeded"


def test_closing_a_stream_stops_generation(llm: LlamaCppBackend) -> None:
    params = GenerationParams(max_tokens=1500, temperature=0)
    prompt = Prompt(text="Count from one to one thousand: one, two, three,")

    async def take_three_then_leave() -> int:
        events = llm.stream(ROUTE, prompt, params)
        seen = 0
        async for event in events:
            assert isinstance(event, TextDelta)
            seen += 1
            if seen == 3:
                break
        await events.aclose()  # type: ignore[attr-defined]
        # The worker is single-threaded: this runs once the abandoned generation has stopped.
        done = llm._executor.submit(lambda: llm._tally.completion_tokens)
        return await asyncio.wrap_future(done)

    generated = asyncio.run(take_three_then_leave())
    assert generated < 20
    out = asyncio.run(llm.generate(ROUTE, FRANCE, GenerationParams(max_tokens=8, temperature=0)))
    assert "Paris" in out.text


def test_concurrent_requests_queue_for_the_one_worker(llm: LlamaCppBackend) -> None:
    prompts = [Prompt(text=f"The number {n} is") for n in range(3)] + [COLORS]
    params = GenerationParams(max_tokens=12, temperature=0)

    async def together() -> list[Generation]:
        return list(await asyncio.gather(*(llm.generate(ROUTE, p, params) for p in prompts)))

    alone = [asyncio.run(llm.generate(ROUTE, p, params)) for p in prompts]
    assert asyncio.run(together()) == alone


def test_empty_prompt_is_400(llm: LlamaCppBackend) -> None:
    with pytest.raises(BackendError) as caught:
        asyncio.run(llm.generate(ROUTE, Prompt(text=""), GREEDY))
    assert caught.value.status == 400


def test_llama_cannot_embed(llm: LlamaCppBackend) -> None:
    with pytest.raises(BackendError) as caught:
        asyncio.run(llm.embed(ROUTE, ["hello"]))
    assert caught.value.status == 400


# -- all-MiniLM-L6-v2 --------------------------------------------------------------------------


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))  # the vectors are unit length


def test_embeddings_rank_similar_sentences(minilm: OnnxMiniLMBackend) -> None:
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell today."]
    out = asyncio.run(minilm.embed(ROUTE, texts))
    food, bread, stocks = out.vectors
    assert _cos(food, bread) > 0.6
    assert _cos(food, stocks) < 0.2
    assert out.dimensions == 384
    for vector in out.vectors:
        assert len(vector) == 384
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, abs_tol=1e-4)


def test_embedding_batch_equals_one_by_one(minilm: OnnxMiniLMBackend) -> None:
    texts = ["short", "A somewhat longer sentence, so the batch needs padding.", "", "Ünïcödé ✓ text"]
    batch = asyncio.run(minilm.embed(ROUTE, texts))
    singles = [asyncio.run(minilm.embed(ROUTE, [t])) for t in texts]
    for vector, single in zip(batch.vectors, singles, strict=True):
        assert single.vectors[0] == pytest.approx(vector, abs=1e-4)
    assert batch.prompt_tokens == sum(s.prompt_tokens for s in singles)
    assert singles[0].prompt_tokens == minilm.count(ROUTE, Prompt(text="short")) == 3  # [CLS] short [SEP]


def test_embedding_input_is_truncated_to_256_word_pieces(minilm: OnnxMiniLMBackend) -> None:
    out = asyncio.run(minilm.embed(ROUTE, ["word " * 1000]))
    assert out.prompt_tokens == 256
    assert asyncio.run(minilm.embed(ROUTE, [])).vectors == []


def test_minilm_cannot_generate(minilm: OnnxMiniLMBackend) -> None:
    with pytest.raises(BackendError) as caught:
        asyncio.run(minilm.generate(ROUTE, FRANCE, GREEDY))
    assert caught.value.status == 400
    with pytest.raises(BackendError):
        asyncio.run(_collect(minilm.stream(ROUTE, FRANCE, GREEDY)))
