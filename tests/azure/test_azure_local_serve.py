"""``make serve CLOUD=azure``: the function app behind the local Functions host stand-in, on the Cosmos DB server and
Azurite it starts, as a process (``python -m functions.azure.local``) on a free port, driven by the ``openai`` SDK.

Generation goes to ``bench.fake_openai_server`` through models registered by the admin API; one test (``model``)
asks the real SmolLM2 the server registers itself. Batches run through the batch function, fed by the blob
trigger's stand-in: through the API, and from a blob put into the emulated container.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from tests.e2e._support import ROOT, Proc, free_port, spawn, start_fake_openai, wait_http

pytestmark = pytest.mark.azure

ADMIN_KEY = "azure-local-admin-key-0123456789abcdef"
CONTAINER = "textnlp-local"
# Azurite's well-known development key (public, documented by Microsoft).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass
class Local:
    base_url: str
    proc: Proc
    tenant: str
    key: str

    def sdk(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=self.key, max_retries=0, timeout=60)

    def emulator(self, name: str) -> str:
        found = re.search(rf"{name}=(\S+)", self.proc.stdout_path.read_text())
        assert found, self.proc.output()
        return found.group(1)

    def container(self) -> Any:
        from azure.storage.blob import ContainerClient

        endpoint = self.emulator("AZURITE_BLOB_ENDPOINT")
        conn = (
            f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={endpoint};"
        )
        return ContainerClient.from_connection_string(conn, CONTAINER)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    work = tmp_path_factory.mktemp("azure-local")
    fake, fake_url = start_fake_openai(work / "logs")
    port = free_port()
    argv = [sys.executable, "-m", "functions.azure.local", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--data-dir", str(work / "data")]
    proc = spawn(f"azure-local-{port}", argv, work / "logs", {**os.environ, "TEXTNLP_ADMIN_KEY": ADMIN_KEY})
    base = f"http://127.0.0.1:{port}"
    ports: list[str] = []
    try:
        wait_http(proc, base + "/health", timeout_s=90)
        with httpx.Client(base_url=base, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30) as admin:
            for model_id, kind in (("fake-gen", "generation"), ("fake-embed", "embedding")):
                route = {"type": "openai", "base_url": fake_url, "model": "fake-model"}
                spec = {"id": model_id, "kind": kind, "backend": route, "context_length": 4096, "max_retries": 0}
                created = admin.post("/admin/models", json={**spec, "max_output_tokens": 256})
                assert created.status_code == 201, created.text
            tenant = admin.post("/admin/tenants", json={"name": "acme"}).json()["id"]
            scopes = ["generate", "embed", "batch"]
            key = admin.post(f"/_admin/tenants/{tenant}/keys", json={"name": "app", "scopes": scopes})
            assert key.status_code == 201, key.text
        local = Local(base, proc, tenant, key.json()["key"])
        for name in ("AZURITE_BLOB_ENDPOINT", "COSMOS_ENDPOINT"):
            found = re.search(r":(\d+)/", local.emulator(name))
            assert found
            ports.append(found.group(1))
        yield local
    finally:
        proc.stop()
        fake.stop()
    assert "Stopped" in proc.stdout_path.read_text(), proc.output()
    for emulator_port in ports:  # the emulators' process groups went with the server
        left = subprocess.run(["pgrep", "-f", f"Port {emulator_port} "], capture_output=True, text=True, check=False)
        assert left.stdout.strip() == "", left.stdout
        left = subprocess.run(["pgrep", "-f", f"port {emulator_port} "], capture_output=True, text=True, check=False)
        assert left.stdout.strip() == "", left.stdout


def test_the_banner_names_the_url_the_models_the_emulators_and_the_admin_alias(local: Local) -> None:
    out = local.proc.stdout_path.read_text()
    assert f"on {local.base_url}" in out
    assert "smollm2-135m-instruct" in out
    assert "in memory" in out
    assert "batch-input/<tenant>/" in out
    assert "/_admin/" in out


def test_the_openai_sdk_lists_models_chats_embeds_and_streams(local: Local) -> None:
    client = local.sdk()
    assert {"smollm2-135m-instruct", "fake-gen", "fake-embed"} <= {m.id for m in client.models.list()}
    chat = client.chat.completions.create(model="fake-gen", messages=[{"role": "user", "content": "alpha beta"}])
    assert chat.choices[0].message.content
    assert chat.usage is not None
    assert chat.usage.total_tokens > 0
    assert client.embeddings.create(model="fake-embed", input=["a sentence"]).data[0].embedding
    stream = client.chat.completions.create(
        model="fake-gen", messages=[{"role": "user", "content": "one two three"}], max_tokens=3, stream=True
    )
    chunks = list(stream)  # collected by the function (no streaming on the v2 model), parsed alike by the SDK
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_an_unknown_route_is_a_404_in_the_error_shape(local: Local) -> None:
    response = httpx.get(local.base_url + "/nope", headers={"authorization": f"Bearer {local.key}"})
    assert response.status_code == 404
    assert set(response.json()["error"]) >= {"message", "type", "code", "param"}
    assert response.headers["x-request-id"]


def _lines(n: int) -> bytes:
    body = {"model": "fake-gen", "messages": [{"role": "user", "content": "alpha beta"}], "max_tokens": 2}
    lines = [{"custom_id": str(i), "method": "POST", "url": "/v1/chat/completions", "body": body} for i in range(n)]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def test_an_api_batch_runs_on_the_batch_function(local: Local) -> None:
    client = local.sdk()
    uploaded = client.files.create(file=("in.jsonl", _lines(3)), purpose="batch")
    assert client.files.content(uploaded.id).read() == _lines(3)
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 60
    while batch.status not in ("completed", "failed", "cancelled", "expired") and time.monotonic() < deadline:
        time.sleep(0.3)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    assert batch.output_file_id is not None
    output = client.files.content(batch.output_file_id).read().decode().splitlines()
    assert sorted(json.loads(line)["custom_id"] for line in output) == ["0", "1", "2"]


def test_a_blob_put_into_azurite_is_processed_as_the_trigger_would(local: Local) -> None:
    from azure.core.exceptions import ResourceNotFoundError

    container = local.container()
    container.upload_blob(f"batch-input/{local.tenant}/dropped.jsonl", _lines(2) + b"{broken\n")
    deadline = time.monotonic() + 60
    while True:
        try:
            errors = container.download_blob(f"batch-output/{local.tenant}/dropped.errors.jsonl").readall()
            break
        except ResourceNotFoundError:
            assert time.monotonic() < deadline, local.proc.output()
            time.sleep(0.3)
    assert [json.loads(x)["line"] for x in errors.splitlines()] == [3]
    output = container.download_blob(f"batch-output/{local.tenant}/dropped.jsonl").readall().splitlines()
    assert sum(json.loads(x)["response"] is not None for x in output) == 2


@pytest.mark.model
def test_the_registered_local_model_answers_through_the_azure_code_path(local: Local) -> None:
    chat = local.sdk().chat.completions.create(
        model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Say hi"}], max_tokens=8, temperature=0
    )
    assert chat.choices[0].message.content
    assert chat.usage is not None
    assert chat.usage.completion_tokens > 0


def test_make_serve_names_azure_among_the_clouds() -> None:
    done = subprocess.run(
        ["make", "--no-print-directory", "serve", "CLOUD=nope"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode != 0
    assert "clouds: local aws gcp azure" in done.stderr
    assert "coming" not in done.stderr
