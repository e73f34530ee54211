"""Files and Batches with the official ``openai`` SDK against the local server; and the input-folder trigger.

Needs the local wiring: a blob store in ``bootstrap.build_gateway``, the per-route body limit in
``asgi.py`` (uploads above the 1 MB JSON limit) and the batch trigger started in the ASGI lifespan.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest
from openai.types import Batch

from tests.e2e._support import FAKE_EMBED, FAKE_GEN, Server, Tenant

pytestmark = pytest.mark.e2e

DEADLINE_S = 30.0


@pytest.fixture
def batch_tenant(server: Server, request: pytest.FixtureRequest) -> Tenant:
    """A fresh tenant whose key may run batches (and the generations in them)."""
    return server.create_tenant(request.node.name[:100], scopes=["generate", "embed", "batch"])


@pytest.fixture
def client(server: Server, batch_tenant: Tenant) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=batch_tenant.key, max_retries=0, timeout=60)


def chat_line(custom_id: str, text: str, model: str = FAKE_GEN) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 5}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def wait_for(check: Callable[[], Any], what: str, timeout_s: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def finished(client: openai.OpenAI, batch_id: str) -> Batch:
    def done() -> Batch | None:
        batch = client.batches.retrieve(batch_id)
        return batch if batch.status in ("completed", "failed", "cancelled", "expired") else None

    result: Batch = wait_for(done, f"batch {batch_id} to finish")
    return result


def test_files_and_a_chat_batch_end_to_end(client: openai.OpenAI) -> None:
    rows = [chat_line(f"req-{i}", f"batch line number {i} here") for i in range(20)]
    rows.append(chat_line("bad-model", "x", model="no-such-model"))
    uploaded = client.files.create(file=("requests.jsonl", io.BytesIO(jsonl(rows))), purpose="batch")
    assert (uploaded.object, uploaded.purpose, uploaded.filename) == ("file", "batch", "requests.jsonl")
    assert uploaded.bytes == len(jsonl(rows))
    assert client.files.retrieve(uploaded.id).id == uploaded.id
    assert uploaded.id in {f.id for f in client.files.list()}
    assert client.files.content(uploaded.id).content == jsonl(rows)

    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"run": "e2e"},
    )
    assert batch.status in ("validating", "in_progress", "finalizing", "completed")
    assert batch.metadata == {"run": "e2e"}
    done = finished(client, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (21, 20, 1)
    assert done.output_file_id is not None
    assert done.error_file_id is not None

    output = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in output] == [r["custom_id"] for r in rows]
    first = output[0]
    assert first["response"]["status_code"] == 200
    assert first["response"]["body"]["choices"][0]["message"]["content"] == "batch line number 0 here"
    errors = [json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()]
    assert [(e["custom_id"], e["line"], e["error"]["code"]) for e in errors] == [("bad-model", 21, "model_not_found")]

    assert batch.id in {b.id for b in client.batches.list(limit=100)}
    page = client.batches.list(limit=1)
    assert len(page.data) == 1
    assert client.files.delete(uploaded.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


def test_embeddings_batch_and_native_lines(client: openai.OpenAI) -> None:
    rows = [
        {"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings", "body": {"model": FAKE_EMBED, "input": "hi"}}
        for i in range(3)
    ]
    uploaded = client.files.create(file=("emb.jsonl", jsonl(rows)), purpose="batch")
    done = finished(
        client, client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h").id
    )
    assert done.request_counts is not None
    assert done.request_counts.completed == 3
    assert done.output_file_id is not None
    output = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert all(o["response"]["body"]["object"] == "list" for o in output)


def test_a_bad_upload_names_its_line_and_uploads_may_exceed_the_json_limit(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("bad.jsonl", jsonl([chat_line("a", "x")]) + b"{nope\n"), purpose="batch")
    assert "line 2" in err.value.message
    big_prompt = "word " * 120_000  # ~600 kB a line, ~3 MB in all: above the 1 MB JSON body limit
    big = jsonl([chat_line(f"big-{i}", big_prompt) for i in range(5)])
    assert len(big) > 2 * 1024 * 1024
    uploaded = client.files.create(file=("big.jsonl", big), purpose="batch")
    assert uploaded.bytes == len(big)


def test_another_tenant_sees_nothing(server: Server, client: openai.OpenAI) -> None:
    uploaded = client.files.create(file=("mine.jsonl", jsonl([chat_line("a", "mine")])), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    other = server.create_tenant("other-batch-tenant", scopes=["generate", "batch"])
    intruder = openai.OpenAI(base_url=server.base_url + "/v1", api_key=other.key, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        intruder.files.retrieve(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        intruder.files.content(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        intruder.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        intruder.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    finished(client, batch.id)


def test_cancel(client: openai.OpenAI) -> None:
    rows = [chat_line(f"c{i}", f"line {i}") for i in range(3000)]
    uploaded = client.files.create(file=("many.jsonl", jsonl(rows)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = finished(client, batch.id)
    assert done.status == "cancelled"
    assert done.request_counts is not None
    assert done.request_counts.completed < 3000


def test_a_file_dropped_in_the_input_folder_runs_as_a_batch(server: Server, batch_tenant: Tenant) -> None:
    folder = server.data_dir / "batch-input" / batch_tenant.id
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"model": FAKE_GEN, "prompt": f"dropped line {i}", "max_tokens": 3} for i in range(10)]
    (folder / "drop.jsonl").write_bytes(jsonl(rows) + b"not json\n")
    out = server.data_dir / "batch-output" / batch_tenant.id
    errors_file = out / "drop.errors.jsonl"
    wait_for(errors_file.exists, "the trigger's output")
    output = [json.loads(line) for line in (out / "drop.jsonl").read_bytes().splitlines()]
    assert [o["line"] for o in output] == list(range(1, 12))
    assert output[0]["response"]["body"]["results"][0]["text"] == "dropped line 0"
    errors = [json.loads(line) for line in errors_file.read_bytes().splitlines()]
    assert [(e["line"], e["error"]["code"]) for e in errors] == [(11, "invalid_json")]
