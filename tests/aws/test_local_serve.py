"""``make serve CLOUD=aws``: the Lambda handler behind a local API Gateway HTTP API, on moto, as a process.

The server (``python -m functions.aws.local``) runs as a subprocess on a free port with two api containers;
the official ``openai`` SDK talks to it. Generation goes to ``bench.fake_openai_server`` (fast and
deterministic) through a model registered by the admin API; one test (``model``) asks the real SmolLM2 the
server registers itself, through the local runtime it starts.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from functions.aws.local.events import IncomingRequest, from_result, to_event
from functions.aws.local.front import CONTAINER_HEADER
from tests.e2e._support import ROOT, Proc, free_port, spawn, start_fake_openai, wait_http

pytestmark = pytest.mark.aws

ADMIN_KEY = "aws-local-admin-key-0123456789abcdef"
SLOW_MS = 1000


@dataclass
class Local:
    base_url: str
    proc: Proc
    key: str

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)

    def sdk(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=self.key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    work = tmp_path_factory.mktemp("aws-local")
    fake, fake_url = start_fake_openai(work / "logs")
    port = free_port()
    argv = [sys.executable, "-m", "functions.aws.local", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--data-dir", str(work / "data"), "--workers", "2"]
    env = {**os.environ, "TEXTNLP_ADMIN_KEY": ADMIN_KEY}
    proc = spawn(f"aws-local-{port}", argv, work / "logs", env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(proc, base + "/health", timeout_s=90)
        with httpx.Client(base_url=base, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30) as admin:
            for model_id, kind, upstream in (
                ("fake-gen", "generation", "fake-model"),
                ("fake-embed", "embedding", "fake-model"),
                ("fake-slow", "generation", f"fault:slow-{SLOW_MS}ms"),
            ):
                route = {"type": "openai", "base_url": fake_url, "model": upstream}
                spec = {"id": model_id, "kind": kind, "backend": route, "context_length": 4096, "max_retries": 0}
                created = admin.post("/admin/models", json={**spec, "max_output_tokens": 256, "timeout_s": 20})
                assert created.status_code == 201, created.text
            tenant = admin.post("/admin/tenants", json={"name": "acme"})
            assert tenant.status_code == 201, tenant.text
            scopes = ["generate", "embed", "batch"]
            key = admin.post(f"/admin/tenants/{tenant.json()['id']}/keys", json={"name": "app", "scopes": scopes})
            assert key.status_code == 201, key.text
        yield Local(base, proc, key.json()["key"])
    finally:
        proc.stop()
        fake.stop()
    assert "Stopped" in proc.stdout_path.read_text(), proc.output()  # SIGTERM: moto and the model server stopped


def test_the_banner_names_the_url_the_models_and_what_is_kept(local: Local) -> None:
    out = local.proc.stdout_path.read_text()
    assert f"on {local.base_url}" in out
    assert "smollm2-135m-instruct" in out
    assert "in memory" in out


def test_the_openai_sdk_lists_models_and_chats(local: Local) -> None:
    client = local.sdk()
    ids = {model.id for model in client.models.list()}
    assert {"smollm2-135m-instruct", "all-minilm-l6-v2", "fake-gen"} <= ids
    chat = client.chat.completions.create(
        model="fake-gen", messages=[{"role": "user", "content": "alpha beta gamma"}], max_tokens=5
    )
    assert chat.choices[0].message.content
    assert chat.usage is not None
    assert chat.usage.total_tokens > 0
    embedded = client.embeddings.create(model="fake-embed", input=["a sentence"])
    assert embedded.data[0].embedding


def test_a_stream_arrives_whole_and_the_sdk_parses_it(local: Local) -> None:
    stream = local.sdk().chat.completions.create(
        model="fake-gen", messages=[{"role": "user", "content": "one two three"}], max_tokens=3, stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_an_unknown_route_is_a_404_in_the_error_shape_with_api_gateways_request_id(local: Local) -> None:
    response = httpx.get(local.base_url + "/nope", headers={"authorization": f"Bearer {local.key}"})
    assert response.status_code == 404
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code", "param"}
    assert response.headers["apigw-requestid"]


def _batch_lines(n: int) -> bytes:
    body = {"model": "fake-gen", "messages": [{"role": "user", "content": "alpha beta"}], "max_tokens": 2}
    lines = [{"custom_id": str(i), "method": "POST", "url": "/v1/chat/completions", "body": body} for i in range(n)]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def test_a_binary_upload_travels_base64_and_a_batch_runs_on_the_batch_function(local: Local) -> None:
    client = local.sdk()
    uploaded = client.files.create(file=("in.jsonl", _batch_lines(3)), purpose="batch")  # multipart: base64
    assert client.files.content(uploaded.id).read() == _batch_lines(3)
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 60
    while batch.status not in ("completed", "failed", "cancelled", "expired") and time.monotonic() < deadline:
        time.sleep(0.3)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert batch.request_counts.completed == 3
    assert batch.output_file_id is not None
    output = client.files.content(batch.output_file_id).read().decode().splitlines()
    assert sorted(json.loads(line)["custom_id"] for line in output) == ["0", "1", "2"]


def test_concurrent_requests_run_on_separate_containers_one_at_a_time(local: Local) -> None:
    body = {"model": "fake-slow", "messages": [{"role": "user", "content": "slow"}], "max_tokens": 2}
    headers = {"authorization": f"Bearer {local.key}"}

    def call(_: int) -> httpx.Response:
        return httpx.post(local.base_url + "/v1/chat/completions", json=body, headers=headers, timeout=30)

    call(0)  # both containers warm is not needed; this one only warms the model's route
    started = time.monotonic()
    with ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(call, range(3)))
    took = time.monotonic() - started
    assert [r.status_code for r in responses] == [200, 200, 200], [r.text for r in responses]
    assert {r.headers[CONTAINER_HEADER] for r in responses} == {"1", "2"}
    # Two containers, one invocation each at a time: the third request waited for a free one.
    assert took >= 2 * SLOW_MS / 1000, took


@pytest.mark.model
def test_the_registered_local_model_answers_through_the_aws_code_path(local: Local) -> None:
    chat = local.sdk().chat.completions.create(
        model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Say hi"}], max_tokens=8, temperature=0
    )
    assert chat.choices[0].message.content
    assert chat.usage is not None
    assert chat.usage.completion_tokens > 0


def test_make_serve_with_an_unknown_cloud_names_the_clouds_and_installs_nothing() -> None:
    done = subprocess.run(
        ["make", "--no-print-directory", "serve", "CLOUD=nope"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode != 0
    assert "unknown CLOUD=nope; clouds: local aws" in done.stderr
    assert "Installing" not in done.stdout + done.stderr


# -- the event and result mapping, without a server ---------------------------------------------------


def _request(**kw: object) -> IncomingRequest:
    fields: dict[str, object] = {
        "method": "post",
        "target": "/v1/files?purpose=batch&a=1&a=2",
        "headers": [("Content-Type", "multipart/form-data; boundary=x"), ("Cookie", "a=1; b=2"), ("X-A", "1")],
        "body": b"\x00\xffbinary",
        "source_ip": "127.0.0.1",
        "host": "127.0.0.1",
        "port": 8080,
    }
    fields.update(kw)
    return IncomingRequest(**fields)  # type: ignore[arg-type]


def test_an_http_request_becomes_a_payload_2_event() -> None:
    event = to_event(_request(), now=1_700_000_000.0)
    assert event["version"] == "2.0"
    assert event["routeKey"] == "$default"
    assert event["rawPath"] == "/v1/files"
    assert event["rawQueryString"] == "purpose=batch&a=1&a=2"
    assert event["queryStringParameters"] == {"purpose": "batch", "a": "1,2"}
    assert event["cookies"] == ["a=1", "b=2"]
    assert event["headers"]["x-a"] == "1"
    assert "cookie" not in event["headers"]
    assert event["requestContext"]["http"]["method"] == "POST"
    assert event["requestContext"]["timeEpoch"] == 1_700_000_000_000
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"\x00\xffbinary"
    text = to_event(_request(headers=[("content-type", "application/json")], body=b'{"a": 1}'))
    assert text["isBase64Encoded"] is False
    assert text["body"] == '{"a": 1}'
    assert "body" not in to_event(_request(body=b""))


def test_a_lambda_result_becomes_the_http_response_api_gateway_sends() -> None:
    result = {
        "statusCode": 201,
        "headers": {"content-type": "application/octet-stream"},
        "cookies": ["s=1"],
        "body": base64.b64encode(b"\x01\x02").decode(),
        "isBase64Encoded": True,
    }
    reply = from_result(result, "rid")
    assert reply.status == 201
    assert reply.body == b"\x01\x02"
    assert ("set-cookie", "s=1") in reply.headers
    assert ("apigw-requestid", "rid") in reply.headers
    inferred = from_result({"hello": "world"}, "rid")  # no statusCode: a JSON body, 200
    assert inferred.status == 200
    assert json.loads(inferred.body) == {"hello": "world"}


def test_the_command_refuses_a_short_admin_key(tmp_path: Path) -> None:
    env = {**os.environ, "TEXTNLP_ADMIN_KEY": "short"}
    argv = [sys.executable, "-m", "functions.aws.local", "--port", str(free_port()), "--data-dir", str(tmp_path)]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "at least 20 characters" in done.stderr
