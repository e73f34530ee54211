"""The seed roadmap's integration test (Task 4.2) and its locust tasks, as written, against the real local server.

The seed names its models ``gpt2`` and ``gpt2-large``: here they are aliases an operator sets on a model the
server has. Two runs: the zero-latency fake OpenAI backend (always), and the real local SmolLM2 (``model``
marker; skipped where llama-cpp-python is not installed). Each run gets its own server, so the aliases it
sets cannot meet another test's models.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e import _support
from tests.e2e._support import FAKE_GEN, Server

pytestmark = pytest.mark.e2e

SEED_ALIASES = ["gpt2", "gpt2-large"]
SMOLLM2 = "smollm2-135m-instruct"


def _target_body(kind: str, fake_base_url: str) -> dict[str, Any]:
    """The registry entry the seed's names will point to (PUT replaces the whole entry)."""
    if kind == "fake":
        route = {"type": "openai", "base_url": fake_base_url, "model": "fake-model"}
        return {
            "id": FAKE_GEN,
            "kind": "generation",
            "backend": route,
            "context_length": 4096,
            "max_output_tokens": 256,
        }
    return {
        "id": SMOLLM2,
        "kind": "generation",
        "backend": {"type": "local", "engine": "llama.cpp"},
        "context_length": 2048,
        "max_output_tokens": 512,
        "owned_by": "HuggingFaceTB",
    }


@pytest.fixture(scope="module", params=["fake", pytest.param("smollm2", marks=pytest.mark.model)])
def seed(request: pytest.FixtureRequest, e2e_dir: Any, fake_openai: str) -> Iterator[tuple[Server, str, str]]:
    """(server, a tenant's API key, the real id behind the seed's model names)."""
    kind: str = request.param
    if kind == "smollm2" and importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (textnlp[local])")
    fake = fake_openai if kind == "fake" else None
    with _support.run_server(e2e_dir / f"data-seed-{kind}", fake_base_url=fake) as server:
        body = {**_target_body(kind, fake_openai), "aliases": SEED_ALIASES}
        put = server.admin.put(f"/admin/models/{body['id']}", json=body)
        assert put.status_code == 200, put.text
        assert put.json()["aliases"] == SEED_ALIASES
        yield server, server.create_tenant("seed").key, body["id"]


def test_seed_integration_flow(seed: tuple[Server, str, str]) -> None:
    """Task 4.2: key in the body for a token, list models with it, generate with top-level text and usage."""
    server, api_key, real_id = seed
    base, API_KEY = server.base_url, api_key  # noqa: N806 - the seed's names

    r = httpx.post(f"{base}/auth/token", json={"api_key": API_KEY})
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    r = httpx.get(f"{base}/v1/models", headers=headers)
    assert r.status_code == 200
    r = httpx.post(
        f"{base}/v1/generate",
        headers=headers,
        json={"model": "gpt2", "prompt": "Once upon a time", "max_tokens": 20},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert "text" in body and "usage" in body  # noqa: PT018 - the seed's assertion, as written

    # What the seed did not check, but a user would expect.
    assert body["model"] == real_id
    assert body["text"] == body["results"][0]["text"]
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"] > 0
    listed = {m["id"]: m for m in httpx.get(f"{base}/v1/models", headers=headers).json()["data"]}
    assert listed[real_id]["aliases"] == SEED_ALIASES
    assert httpx.get(f"{base}/v1/models/gpt2-large", headers=headers).json()["id"] == real_id


class SeedUser:
    """The seed's locust ``HttpUser``: its task bodies verbatim; ``client`` is an httpx client on the server
    (locust's is a requests session: same call shape) and ``on_start`` takes a token as the seed's flow does."""

    def __init__(self, client: httpx.Client, api_key: str) -> None:
        self.client = client
        self.api_key = api_key

    def on_start(self) -> None:
        token = self.client.post("/auth/token", json={"api_key": self.api_key}).json()["token"]
        self.headers = {"Authorization": f"Bearer {token}"}

    def generate_short(self) -> None:
        self.client.post(
            "/v1/generate", json={"model": "gpt2", "prompt": "Hello world", "max_tokens": 50}, headers=self.headers
        )

    def generate_long(self) -> None:
        self.client.post(
            "/v1/generate",
            json={"model": "gpt2-large", "prompt": "Tell me a story", "max_tokens": 100},
            headers=self.headers,
        )


def test_seed_locust_tasks(seed: tuple[Server, str, str]) -> None:
    server, api_key, real_id = seed
    answers: list[httpx.Response] = []
    with httpx.Client(base_url=server.base_url, timeout=300, event_hooks={"response": [answers.append]}) as client:
        user = SeedUser(client, api_key)
        user.on_start()
        for _ in range(3):
            user.generate_short()
            user.generate_long()
    token_answer, *generations = answers
    assert token_answer.status_code == 200
    assert len(generations) == 6
    for r in generations:
        r.read()
        assert r.status_code == 200, r.text
        body = r.json()
        assert isinstance(body["text"], str)
        assert body["usage"]["completion_tokens"] <= (50 if "Hello world" in r.request.content.decode() else 100)
        assert body["model"] == real_id

    # Usage is metered under the real id, whatever name the caller used.
    with server.client(api_key) as c:
        report = c.get("/v1/usage", params={"group_by": "model"}).json()
    assert {row["model"] for row in report["data"]} == {real_id}
