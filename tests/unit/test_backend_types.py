"""Backend types: declared by the adapters, resolved by one catalog in core for every runtime."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest

from core.backend_types import BackendCatalog, BackendType
from core.errors import APIError, BackendError, InvalidRequest
from core.inference import Prompt
from functions.aws.bootstrap import AwsBackends
from functions.local.backends import LocalBackends


def test_each_runtime_serves_the_types_its_adapters_declare() -> None:
    assert LocalBackends().names == ("local", "openai")
    assert AwsBackends("us-east-1").names == ("sagemaker", "openai")


@pytest.mark.parametrize(
    ("catalog", "route", "param", "words"),
    [
        (LocalBackends(), {"type": "sagemaker", "endpoint_name": "e"}, "backend.type", "'local', 'openai'"),
        (AwsBackends(), {"type": "local"}, "backend.type", "'sagemaker', 'openai' on AWS"),
        (AwsBackends(), {}, "backend.type", "not None"),
        (AwsBackends(), {"type": 7}, "backend.type", "not 7"),
        (AwsBackends(), {"type": "sagemaker"}, "backend", "needs endpoint_name"),
        (LocalBackends(), {"type": "openai", "base_url": "http://x/v1"}, "backend", "needs model"),
        (LocalBackends(), {"type": "local", "engine": "vllm"}, "backend.engine", "'llama.cpp', 'onnx'"),
    ],
)
def test_a_route_no_backend_here_serves_is_a_400_that_says_why(
    catalog: BackendCatalog, route: dict[str, Any], param: str, words: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        catalog.check_route(route)
    assert caught.value.param == param
    assert words in str(caught.value)


def test_routes_of_the_declared_types_pass() -> None:
    LocalBackends().check_route({"type": "local", "engine": "onnx"})
    LocalBackends().check_route({"type": "openai", "base_url": "http://x/v1", "model": "m"})
    AwsBackends().check_route({"type": "sagemaker", "endpoint_name": "ep", "region": "eu-west-1"})


def test_calling_a_type_this_runtime_lacks_is_a_501_naming_what_it_serves() -> None:
    with pytest.raises(BackendError) as caught:
        AwsBackends().backend_for({"type": "local"})
    assert caught.value.status == 501
    assert caught.value.code == "backend_unavailable"
    assert "'sagemaker', 'openai'" in str(caught.value)


class Counting:
    def __init__(self, name: str) -> None:
        self.name = name

    def count(self, route: Mapping[str, Any], prompt: Prompt) -> int:
        return 42


def test_a_backend_is_built_once_per_instance_even_when_many_ask_at_once() -> None:
    builds: list[str] = []

    def build(name: str) -> Any:
        builds.append(name)
        time.sleep(0.02)  # a slow build (a model load): the others must wait for it, not build their own
        return Counting(name)

    catalog = BackendCatalog(
        [BackendType("local", build, instance=lambda r: str(r.get("engine", "a")), counts_tokens=True)], "here"
    )
    got: list[Any] = []
    threads = [threading.Thread(target=lambda: got.append(catalog.backend_for({"type": "local"}))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert builds == ["a"]
    assert len({id(b) for b in got}) == 1
    assert catalog.backend_for({"type": "local", "engine": "b"}).name == "b"  # type: ignore[attr-defined]
    assert builds == ["a", "b"]


def test_only_types_that_count_tokens_are_asked_to() -> None:
    counting = BackendCatalog([BackendType("local", Counting, counts_tokens=True)], "here")
    plain = BackendCatalog([BackendType("openai", Counting)], "here")
    prompt = Prompt(text="hello")
    assert counting.count({"type": "local"}, prompt) == 42
    assert plain.count({"type": "openai"}, prompt) is None
    assert plain.count({"type": "other"}, prompt) is None


def test_a_failed_build_is_not_kept() -> None:
    attempts: list[str] = []

    def build(name: str) -> Any:
        attempts.append(name)
        if len(attempts) == 1:
            raise BackendError("model file missing", status=503)
        return Counting(name)

    catalog = BackendCatalog([BackendType("local", build)], "here")
    with pytest.raises(APIError):
        catalog.backend_for({"type": "local"})
    assert catalog.backend_for({"type": "local"}).name == "local"  # type: ignore[attr-defined]
