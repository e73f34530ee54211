"""The official ``openai`` SDK against the local server: fake backend first, then the real models."""

from __future__ import annotations

import math
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from bench.fake_openai_server import embedding as fake_embedding
from tests.e2e._support import FAKE_EMBED, FAKE_GEN, Server, Tenant

pytestmark = pytest.mark.e2e

SMOLLM = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"


def sdk(server: Server, key: str) -> openai.OpenAI:
    # max_retries=0: the SDK would otherwise retry 429s and 5xx and hide what the server said.
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0, timeout=60)


@pytest.fixture
def client(server: Server, tenant: Tenant) -> openai.OpenAI:
    return sdk(server, tenant.key)


# -- fake backend ---------------------------------------------------------------------------------


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {FAKE_GEN, FAKE_EMBED, SMOLLM, MINILM} <= ids
    model = client.models.retrieve(FAKE_GEN)
    assert model.id == FAKE_GEN
    assert model.object == "model"
    extra = model.model_extra or {}
    assert extra["kind"] == "generation"
    assert extra["context_length"] == 4096
    assert extra["max_output_tokens"] == 256
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("no-such-model")
    assert err.value.status_code == 404
    assert err.value.code == "model_not_found"


def test_completions_create(client: openai.OpenAI) -> None:
    out = client.completions.create(model=FAKE_GEN, prompt="one two three four five", max_tokens=3)
    assert out.object == "text_completion"
    assert out.model == FAKE_GEN
    assert out.choices[0].text == "one two three"
    assert out.choices[0].finish_reason == "length"
    assert out.usage is not None
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (5, 3, 8)

    stop = client.completions.create(model=FAKE_GEN, prompt="alpha beta gamma", max_tokens=10, stop=[" gamma"])
    assert stop.choices[0].text == "alpha beta"
    assert stop.choices[0].finish_reason == "stop"


def test_completions_stream_matches_non_streamed(client: openai.OpenAI) -> None:
    prompt = "red green blue cyan magenta"
    plain = client.completions.create(model=FAKE_GEN, prompt=prompt, max_tokens=4)
    chunks = list(
        client.completions.create(
            model=FAKE_GEN, prompt=prompt, max_tokens=4, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == plain.choices[0].text == "red green blue cyan"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1
    assert usage_chunks[0] is chunks[-1]
    assert usage_chunks[0].usage == plain.usage


def test_chat_completions_create(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model=FAKE_GEN,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "alpha beta gamma"}],
        max_tokens=10,
    )
    assert out.object == "chat.completion"
    assert out.id.startswith("chatcmpl-")
    message = out.choices[0].message
    assert message.role == "assistant"
    assert message.content == "alpha beta gamma"
    assert out.choices[0].finish_reason == "stop"
    assert out.usage is not None
    # The fake counts words of every message as prompt tokens and of the reply as completion tokens.
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (5, 3, 8)


def test_chat_stream_usage_matches_non_streamed(client: openai.OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "the quick brown fox jumps over the lazy dog"}
    ]
    plain = client.chat.completions.create(model=FAKE_GEN, messages=messages, max_completion_tokens=6)
    stream = client.chat.completions.create(
        model=FAKE_GEN,
        messages=messages,
        max_completion_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    content = [c for c in chunks if c.choices]
    assert content[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in content)
    assert text == plain.choices[0].message.content == "the quick brown fox jumps over"
    assert content[-1].choices[0].finish_reason == plain.choices[0].finish_reason == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage == plain.usage
    assert chunks[-1].usage.total_tokens == 9 + 6

    # Without include_usage there is no usage chunk at all.
    bare = list(client.chat.completions.create(model=FAKE_GEN, messages=messages, max_tokens=2, stream=True))
    assert all(c.usage is None for c in bare)
    assert "".join(c.choices[0].delta.content or "" for c in bare if c.choices) == "the quick"


def test_embeddings_create(client: openai.OpenAI) -> None:
    texts = ["hello world", "a b c"]
    # The SDK asks for base64 by default and decodes it; float must give the same vectors.
    b64 = client.embeddings.create(model=FAKE_EMBED, input=texts)
    floats = client.embeddings.create(model=FAKE_EMBED, input=texts, encoding_format="float")
    for out in (b64, floats):
        assert out.model == FAKE_EMBED
        assert [d.index for d in out.data] == [0, 1]
        assert out.usage.prompt_tokens == out.usage.total_tokens == 5
        for text, item in zip(texts, out.data, strict=True):
            expected = fake_embedding(text)
            assert len(item.embedding) == len(expected)
            assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(item.embedding, expected, strict=True))
    single = client.embeddings.create(model=FAKE_EMBED, input="just one", encoding_format="float")
    assert len(single.data) == 1


def test_sdk_authentication_error(server: Server) -> None:
    for bad in ("tnlp_key_0123456789abcdef_notasecret", "sk-not-a-textnlp-key-at-all", "a.b.c"):
        with pytest.raises(openai.AuthenticationError) as err:
            sdk(server, bad).chat.completions.create(model=FAKE_GEN, messages=[{"role": "user", "content": "hi"}])
        assert err.value.status_code == 401
        assert err.value.code in ("invalid_api_key", "invalid_token")
        assert err.value.body["type"] == "authentication_error"  # type: ignore[index]


def test_sdk_not_found_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert err.value.code == "model_not_found"
    assert err.value.param == "model"
    # An embedding model cannot serve chat, nor a generation model embeddings: the model exists, so 400.
    with pytest.raises(openai.BadRequestError) as wrong:
        client.chat.completions.create(model=FAKE_EMBED, messages=[{"role": "user", "content": "hi"}])
    assert (wrong.value.code, wrong.value.param) == ("model_not_supported", "model")
    with pytest.raises(openai.BadRequestError) as wrong:
        client.embeddings.create(model=FAKE_GEN, input="hi")
    assert (wrong.value.code, wrong.value.param) == ("model_not_supported", "model")


def test_sdk_bad_request_error(client: openai.OpenAI) -> None:
    cases: list[tuple[dict[str, Any], str | None, str | None]] = [
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10_000}, "max_tokens_exceeded", "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": 5}, "invalid_value", "temperature"),
        ({"messages": []}, "invalid_value", "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "invalid_value", None),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2, "stream": True}, None, "n"),
    ]
    for kwargs, code, param in cases:
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=FAKE_GEN, **kwargs)
        assert err.value.status_code == 400, kwargs
        assert err.value.body["type"] == "invalid_request_error"  # type: ignore[index]
        if param is not None:
            assert err.value.param == param, (kwargs, err.value.body)
        assert err.value.code == code, (kwargs, err.value.body)
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=FAKE_EMBED, input=["ok", ""])
    assert err.value.param == "input"


def test_sdk_rate_limit_errors(server: Server) -> None:
    quota = server.create_tenant("quota", limits={"token_quota": 50})
    with pytest.raises(openai.RateLimitError) as err:
        sdk(server, quota.key).completions.create(model=FAKE_GEN, prompt="hi", max_tokens=100)
    assert err.value.status_code == 429
    assert err.value.code == "insufficient_quota"
    assert err.value.body["type"] == "insufficient_quota"  # type: ignore[index]
    # A request that fits the quota still goes through.
    ok = sdk(server, quota.key).completions.create(model=FAKE_GEN, prompt="hi there", max_tokens=5)
    assert ok.usage is not None
    assert ok.usage.total_tokens == 4

    rpm = server.create_tenant("rpm", limits={"requests_per_minute": 1})
    client = sdk(server, rpm.key)
    first = client.chat.completions.with_raw_response.create(
        model=FAKE_GEN, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert first.headers["x-ratelimit-limit-requests"] == "1"
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model=FAKE_GEN, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert err.value.code == "rate_limit_exceeded"
    assert err.value.body["type"] == "rate_limit_error"  # type: ignore[index]
    retry_after = int(err.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 60


# -- the real default models ------------------------------------------------------------------------


@pytest.mark.model
def test_real_smollm2_chat_and_stream(client: openai.OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name three colours."}]
    kwargs: dict[str, Any] = {"model": SMOLLM, "messages": messages, "max_tokens": 24, "temperature": 0}
    plain = client.chat.completions.create(**kwargs)
    assert plain.model == SMOLLM
    assert plain.choices[0].message.content.strip()
    assert plain.choices[0].finish_reason in ("stop", "length")
    assert plain.usage is not None
    assert plain.usage.prompt_tokens > 5
    assert 1 <= plain.usage.completion_tokens <= 24
    assert plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens

    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # Greedy decoding from a fresh KV cache: the stream is the same text with the same usage.
    assert text == plain.choices[0].message.content
    assert chunks[-1].usage == plain.usage

    # A deterministic request asked again is served from the cache, free of charge.
    again = client.chat.completions.with_raw_response.create(**kwargs)
    assert again.headers["x-textnlp-cache"] == "hit"
    assert again.parse().choices[0].message.content == plain.choices[0].message.content


@pytest.mark.model
def test_real_smollm2_completion(client: openai.OpenAI) -> None:
    out = client.completions.create(model=SMOLLM, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert out.choices[0].text.strip()
    assert out.usage is not None
    assert 1 <= out.usage.completion_tokens <= 8


@pytest.mark.model
def test_real_minilm_embeddings(client: openai.OpenAI) -> None:
    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Quarterly interest rates rose sharply."]
    out = client.embeddings.create(model=MINILM, input=texts)
    vectors = [d.embedding for d in out.data]
    assert [len(v) for v in vectors] == [384] * 3
    assert all(math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, abs_tol=1e-3) for v in vectors)

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2]) + 0.2
    assert out.usage.prompt_tokens > 0
