"""Helpers for the AWS adapter tests: boto3 client settings for local servers, moto's seeding API."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

from core.inference import ChatMessage, GenerationParams, Prompt, StreamEvent

REGION = "us-east-1"
T = TypeVar("T")

PARAMS = GenerationParams(max_tokens=16, temperature=0.0)
TEXT = Prompt(text="Once upon a time")
CHAT = Prompt(messages=(ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")))
TGI = {"type": "sagemaker", "endpoint_name": "textgen", "container": "tgi"}
LMI = {"type": "sagemaker", "endpoint_name": "textgen-lmi", "container": "lmi"}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def collect(events: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [event async for event in events]


def post_json(url: str, payload: Any) -> int:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data or b"", method="POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


def client_kwargs(endpoint_url: str, **config: Any) -> dict[str, Any]:
    from botocore.config import Config

    return {
        "endpoint_url": endpoint_url,
        "region_name": REGION,
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "config": Config(retries={"total_max_attempts": 1}, **config),
    }


def seed_sagemaker_results(moto_url: str, bodies: list[Any]) -> None:
    """Queue results moto answers ``invoke_endpoint`` with, in order (one per distinct request)."""
    results = [
        {"Body": json.dumps(body), "ContentType": "application/json", "InvokedProductionVariant": "AllTraffic"}
        for body in bodies
    ]
    status = post_json(f"{moto_url}/moto-api/static/sagemaker/endpoint-results", {"results": results})
    assert status == 201
