"""Batches API through the gateway: create, run on the job queue, retrieve, list, cancel; scopes and tenants."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from core.app import Gateway
from core.auth import api_keys
from core.http import Request
from core.jobs import InProcessJobQueue
from tests.fakes import FakeBackend, Harness, Resolver, error_of, json_of, make_harness


def chat_line(custom_id: str, content: str = "hello batch world", model: str = "fake-gen") -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 8}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}).encode()


@pytest.fixture
def h() -> Harness:
    return make_harness()


@pytest.fixture
def key(h: Harness) -> str:
    return h.key_with("batch", "generate", "embed")


def upload(h: Harness, key: str, lines: list[bytes]) -> str:
    response = h.upload(b"\n".join(lines) + b"\n", key=key)
    assert response.status == 200, response.body
    file_id: str = json_of(response)["id"]
    return file_id


def create(h: Harness, key: str, file_id: str, endpoint: str = "/v1/chat/completions", **extra: Any) -> dict[str, Any]:
    payload = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h", **extra}
    response = h.call_json("POST", "/v1/batches", payload, key=key)
    assert response.status == 200, response.body
    body: dict[str, Any] = json_of(response)
    return body


def content(h: Harness, key: str, file_id: str) -> list[dict[str, Any]]:
    response = h.call("GET", f"/v1/files/{file_id}/content", key=key)
    assert response.status == 200
    return [json.loads(line) for line in response.body.splitlines()]


def test_a_batch_runs_to_completion_with_openai_shaped_output(h: Harness, key: str) -> None:
    file_id = upload(h, key, [chat_line("a"), chat_line("b", model="no-such-model"), chat_line("c", "one two")])
    batch = create(h, key, file_id, metadata={"job": "nightly"})
    assert batch["status"] == "validating"
    assert batch["object"] == "batch"
    assert (batch["input_file_id"], batch["endpoint"], batch["metadata"]) == (
        file_id,
        "/v1/chat/completions",
        {"job": "nightly"},
    )
    assert batch["request_counts"] == {"total": 3, "completed": 0, "failed": 0}
    assert batch["expires_at"] == batch["created_at"] + 86_400
    assert h.jobs.submitted == [("batch", h.tenant.id, batch["id"])]
    assert h.run_jobs() == 1
    done = json_of(h.call("GET", f"/v1/batches/{batch['id']}", key=key))
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    assert all(done[f] is not None for f in ("in_progress_at", "finalizing_at", "completed_at"))
    out = content(h, key, done["output_file_id"])
    assert [o["custom_id"] for o in out] == ["a", "b", "c"]
    first = out[0]
    assert set(first) == {"id", "custom_id", "line", "response", "error"}
    assert first["response"]["status_code"] == 200
    assert first["response"]["request_id"] == f"{batch['id']}:1"
    assert first["response"]["body"]["object"] == "chat.completion"
    assert first["response"]["body"]["choices"][0]["message"]["content"] == "hello batch world"
    (error,) = content(h, key, done["error_file_id"])
    assert (error["custom_id"], error["line"], error["error"]["code"]) == ("b", 2, "model_not_found")
    assert error["response"]["status_code"] == 404
    files = json_of(h.call("GET", "/v1/files", key=key, query={"purpose": "batch_output"}))["data"]
    assert {f["id"] for f in files} == {done["output_file_id"]}
    assert {u.request_id for u in h.usage(h.tenant.id)} == {f"{batch['id']}:1", f"{batch['id']}:3"}
    assert {u.key_id for u in h.usage(h.tenant.id)} == {api_keys.parse_key(key)}  # charged to the caller's key


def test_lines_for_another_endpoint_fail_alone(h: Harness, key: str) -> None:
    native = b'{"model": "fake-gen", "prompt": "native line"}'
    file_id = upload(h, key, [chat_line("a"), native])
    batch = create(h, key, file_id)
    h.run_jobs()
    done = json_of(h.call("GET", f"/v1/batches/{batch['id']}", key=key))
    assert done["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
    (error,) = content(h, key, done["error_file_id"])
    assert (error["line"], error["error"]["code"]) == (2, "mismatched_url")


def test_without_errors_there_is_no_error_file(h: Harness, key: str) -> None:
    batch = create(h, key, upload(h, key, [chat_line("a")]))
    h.run_jobs()
    done = json_of(h.call("GET", f"/v1/batches/{batch['id']}", key=key))
    assert done["error_file_id"] is None
    assert done["output_file_id"] is not None


def test_create_checks_its_input(h: Harness, key: str) -> None:
    file_id = upload(h, key, [chat_line("a")])
    missing = h.call_json(
        "POST", "/v1/batches", {"input_file_id": "file-nope", "endpoint": "/v1/chat/completions"}, key=key
    )
    assert (missing.status, error_of(missing)["param"]) == (404, "input_file_id")
    for payload, param in (
        ({"input_file_id": file_id, "endpoint": "/v1/images"}, "endpoint"),
        ({"input_file_id": file_id, "endpoint": "/v1/completions", "completion_window": "48h"}, "completion_window"),
        ({"endpoint": "/v1/completions"}, "input_file_id"),
        ({"input_file_id": file_id, "endpoint": "/v1/completions", "metadata": {"k": "v" * 600}}, "metadata"),
    ):
        response = h.call_json("POST", "/v1/batches", payload, key=key)
        assert response.status == 400, payload
        assert error_of(response)["param"] == param
    tuning_key = h.key_with("batch", "fine_tune")
    tuning = json_of(h.upload(b'{"prompt": "q", "completion": "a"}', purpose="fine-tune", key=tuning_key))["id"]
    wrong = h.call_json("POST", "/v1/batches", {"input_file_id": tuning, "endpoint": "/v1/completions"}, key=key)
    assert "purpose" in error_of(wrong)["message"]
    assert h.jobs.submitted == []


def test_batches_need_the_batch_scope(h: Harness, key: str) -> None:
    file_id = upload(h, key, [chat_line("a")])
    batch = create(h, key, file_id)
    plain = h.key  # generate + embed only
    for method, path in (("GET", "/v1/batches"), ("GET", f"/v1/batches/{batch['id']}")):
        assert error_of(h.call(method, path, key=plain))["code"] == "insufficient_scope"
    assert h.call("POST", f"/v1/batches/{batch['id']}/cancel", key=plain).status == 403


def test_a_batch_key_without_the_generate_scope_fails_each_line(h: Harness) -> None:
    batch_only = h.key_with("batch")
    batch = create(h, batch_only, upload(h, batch_only, [chat_line("a")]))
    h.run_jobs()
    done = json_of(h.call("GET", f"/v1/batches/{batch['id']}", key=batch_only))
    assert done["request_counts"] == {"total": 1, "completed": 0, "failed": 1}
    (error,) = content(h, batch_only, done["error_file_id"])
    assert error["response"]["status_code"] == 403


def test_other_tenants_batches_do_not_exist_for_the_caller(h: Harness, key: str) -> None:
    batch = create(h, key, upload(h, key, [chat_line("a")]))
    other, _ = h.new_tenant("other")
    other_key = h.key_with("batch", "generate", tenant=other.id)
    assert h.call("GET", f"/v1/batches/{batch['id']}", key=other_key).status == 404
    assert h.call("POST", f"/v1/batches/{batch['id']}/cancel", key=other_key).status == 404
    assert json_of(h.call("GET", "/v1/batches", key=other_key))["data"] == []
    # Nor can another tenant start a batch on this tenant's file.
    foreign = h.call_json(
        "POST",
        "/v1/batches",
        {"input_file_id": batch["input_file_id"], "endpoint": "/v1/chat/completions"},
        key=other_key,
    )
    assert foreign.status == 404


def test_list_newest_first_with_after_and_limit(h: Harness, key: str) -> None:
    file_id = upload(h, key, [chat_line("a")])
    ids = []
    for _ in range(4):
        ids.append(create(h, key, file_id)["id"])
        h.clock.advance(1)
    page = json_of(h.call("GET", "/v1/batches", key=key, query={"limit": "3"}))
    assert [b["id"] for b in page["data"]] == ids[::-1][:3]
    assert (page["has_more"], page["first_id"], page["last_id"]) == (True, ids[3], ids[1])
    rest = json_of(h.call("GET", "/v1/batches", key=key, query={"after": page["last_id"]}))
    assert [b["id"] for b in rest["data"]] == [ids[0]]
    assert rest["has_more"] is False


def test_cancel_before_it_runs(h: Harness, key: str) -> None:
    batch = create(h, key, upload(h, key, [chat_line("a"), chat_line("b")]))
    cancelled = json_of(h.call("POST", f"/v1/batches/{batch['id']}/cancel", key=key))
    assert cancelled["status"] == "cancelling"
    assert cancelled["cancelling_at"] is not None
    again = json_of(h.call("POST", f"/v1/batches/{batch['id']}/cancel", key=key))
    assert again["status"] == "cancelling"
    h.run_jobs()
    done = json_of(h.call("GET", f"/v1/batches/{batch['id']}", key=key))
    assert (done["status"], done["output_file_id"], h.backend.calls) == ("cancelled", None, 0)
    assert done["cancelled_at"] is not None


def test_a_finished_batch_cannot_be_cancelled(h: Harness, key: str) -> None:
    batch = create(h, key, upload(h, key, [chat_line("a")]))
    h.run_jobs()
    response = h.call("POST", f"/v1/batches/{batch['id']}/cancel", key=key)
    assert (response.status, error_of(response)["code"]) == (409, "batch_not_cancellable")


def test_in_process_queue_runs_the_batch_in_the_background_and_cancel_stops_it() -> None:
    """The default queue: the batch runs as a task of the server's loop while requests go on."""
    h = make_harness(backend=FakeBackend(delay_s=0.002))
    gateway = Gateway(h.store, Resolver({"gen": h.backend}), clock=h.clock, blobs=h.blobs)
    assert isinstance(gateway.jobs, InProcessJobQueue)
    gateway.batch_settings = type(gateway.batch_settings)(concurrency=4, flush_every=2)
    h.gateway = gateway
    key = h.key_with("batch", "generate")
    file_id = upload(h, key, [chat_line(f"c{i}") for i in range(300)])

    async def scenario() -> dict[str, Any]:
        def call(method: str, path: str, body: bytes = b"") -> Any:
            request = Request(method, path, {"authorization": f"Bearer {key}"}, {}, body)
            return gateway.handle(request)

        payload = json.dumps({"input_file_id": file_id, "endpoint": "/v1/chat/completions"}).encode()
        created = json.loads((await call("POST", "/v1/batches", payload)).body)
        for _ in range(2000):  # until some lines have run
            if h.backend.calls >= 20:
                break
            await asyncio.sleep(0.005)
        cancelling = json.loads((await call("POST", f"/v1/batches/{created['id']}/cancel")).body)
        assert cancelling["status"] == "cancelling"
        await gateway.jobs.join()  # type: ignore[attr-defined]
        return json.loads((await call("GET", f"/v1/batches/{created['id']}")).body)  # type: ignore[no-any-return]

    done = asyncio.run(scenario())
    assert done["status"] == "cancelled"
    assert 20 <= done["request_counts"]["completed"] < 300
    assert done["request_counts"]["completed"] == h.backend.calls
    assert len(content(h, key, done["output_file_id"])) == done["request_counts"]["completed"]
