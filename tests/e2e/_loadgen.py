"""Load generator run in spawned processes by test_concurrency (kept light: only stdlib + httpx)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

Result = dict[str, Any]


def request_for(index: int, model: str, max_tokens: int, prompt_words: int) -> tuple[str, dict[str, Any]]:
    """Request ``index`` of the burst: completions, chat, or streamed chat, each of a known size."""
    words = " ".join(f"w{index}x{i}" for i in range(prompt_words))
    kind = index % 3
    if kind == 0:
        return "/v1/completions", {"model": model, "prompt": words, "max_tokens": max_tokens}
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": words}], "max_tokens": max_tokens}
    if kind == 2:
        body.update(stream=True, stream_options={"include_usage": True})
    return "/v1/chat/completions", body


async def _one(client: httpx.AsyncClient, index: int, spec: dict[str, Any]) -> Result:
    path, body = request_for(index, spec["model"], spec["max_tokens"], spec["prompt_words"])
    try:
        response = await client.post(path, json=body)
    except httpx.HTTPError as exc:
        return {"index": index, "status": -1, "error": repr(exc)}
    result: Result = {"index": index, "status": response.status_code, "headers": dict(response.headers)}
    if body.get("stream") and response.status_code == 200:
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        result["done"] = events[-1:] == ["[DONE]"]
        chunks = [json.loads(e) for e in events if e != "[DONE]"]
        result["errors"] = [c for c in chunks if "error" in c]
        usage = [c["usage"] for c in chunks if c.get("usage")]
        result["usage"] = usage[-1] if usage else None
    else:
        try:
            data = response.json()
        except ValueError:
            data = {"raw": response.text[:500]}
        result["usage"] = data.get("usage")
        result["error"] = data.get("error")
    return result


async def _burst(spec: dict[str, Any], indices: list[int]) -> list[Result]:
    limits = httpx.Limits(max_connections=len(indices), max_keepalive_connections=len(indices))
    headers = {"authorization": f"Bearer {spec['key']}"}
    async with httpx.AsyncClient(base_url=spec["base_url"], headers=headers, limits=limits, timeout=60) as client:
        return list(await asyncio.gather(*(_one(client, i, spec) for i in indices)))


def run(spec: dict[str, Any], indices: list[int], barrier: Any, results: Any) -> None:
    """Process entry point: wait for every process to be ready, fire all requests at once."""
    barrier.wait(timeout=60)
    results.put(asyncio.run(_burst(spec, indices)))
