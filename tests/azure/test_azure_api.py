"""``functions.azure.function_app`` ``api`` through the v2 model's own function object, on the emulators.

Requests are the samples of ``events/azure`` (``http_*.json``) as ``azure.functions.HttpRequest`` objects, run on
one worker loop (``tests.azure.function_app_world``); models are ``openai`` routes to the fake OpenAI server, whose
``fault:<mode>`` models give the failures. Files and batches live in the data container on Azurite.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from functions.azure import bootstrap
from tests.azure.function_app_world import (
    ADMIN_KEY,
    EVENTS,
    FUNCTIONS,
    MODEL,
    Context,
    World,
    azure_world,
    http_request,
)
from tests.fakes import multipart

pytestmark = pytest.mark.azure


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with azure_world() as w:
        w.model(MODEL)
        w.model("fault-500", "fault:500")
        yield w


@pytest.fixture(scope="module")
def acme(world: World) -> tuple[str, str]:
    return world.tenant("acme")


def body_of(answer: Any) -> Any:
    return json.loads(answer.get_body())


def chat(world: World, key: str, **fields: Any) -> Any:
    body = json.loads(json.loads((EVENTS / "http_chat_completions_ok.json").read_text())["body"])
    body.update({"model": MODEL, **fields})
    return world.call("chat_completions_ok", key, body=body)


def usage_totals(world: World, key: str) -> dict[str, Any]:
    answer = world.call("usage_ok", key)
    assert answer.status_code == 200, answer.get_body()
    totals: dict[str, Any] = body_of(answer)["totals"]
    return totals


def test_the_app_indexes_one_catch_all_http_function_and_one_event_grid_function() -> None:
    api = json.loads(FUNCTIONS["api"].get_function_json())["bindings"]
    assert api[0]["type"] == "httpTrigger"
    assert api[0]["route"] == "{*path}"
    assert {"GET", "POST", "DELETE"} <= set(api[0]["methods"])
    assert api[0]["authLevel"] == "ANONYMOUS"
    batch = json.loads(FUNCTIONS["batch"].get_function_json())["bindings"]
    assert batch[0]["type"] == "eventGridTrigger"
    host = json.loads((Path(bootstrap.__file__).parent / "host.json").read_text())
    assert host["extensions"]["http"]["routePrefix"] == ""


def test_the_admin_key_is_imported_at_the_first_request_and_lists_the_models(world: World) -> None:
    answer = world.call("models_list_ok", ADMIN_KEY)
    assert answer.status_code == 200
    assert MODEL in [m["id"] for m in body_of(answer)["data"]]
    assert answer.headers["x-request-id"].startswith("inv-"), "the invocation id is the request id"


def test_a_request_without_a_key_or_with_a_wrong_one_is_401_in_the_error_shape(world: World) -> None:
    for key in (None, "tnlp_key_nope_nothing"):
        answer = world.call("models_list_ok", key)
        assert answer.status_code == 401
        assert {"message", "type", "code"} <= set(body_of(answer)["error"])
        assert answer.headers["content-type"].startswith("application/json")


def test_an_access_token_from_auth_token_works_as_a_bearer(world: World, acme: tuple[str, str]) -> None:
    token = body_of(world.call("auth_token_ok", acme[1]))["access_token"]
    assert world.call("models_list_ok", token).status_code == 200


def test_the_admin_routes_answer_under_admin_and_under_the_hosts_free_alias(world: World) -> None:
    direct = world.call("generate_ok", ADMIN_KEY, method="GET", path="/admin/tenants", body=None)
    alias = world.call("generate_ok", ADMIN_KEY, method="GET", path="/_admin/tenants", body=None)
    assert direct.status_code == alias.status_code == 200
    assert body_of(direct)["data"] == body_of(alias)["data"]


def test_a_chat_completion_answers_and_is_metered(world: World) -> None:
    _, key = world.tenant("meter")
    answer = chat(world, key)
    assert answer.status_code == 200, answer.get_body()
    body = body_of(answer)
    assert body["choices"][0]["message"]["content"]
    totals = usage_totals(world, key)
    assert totals["requests"] == 1
    assert totals["total_tokens"] == body["usage"]["total_tokens"]


def test_a_callers_request_id_is_echoed(world: World, acme: tuple[str, str]) -> None:
    answer = world.call("models_list_ok", acme[1], headers={"x-request-id": "trace-42"})
    assert answer.headers["x-request-id"] == "trace-42"


def test_a_stream_is_answered_whole_as_server_sent_events_and_charged_once(world: World) -> None:
    _, key = world.tenant("streamer")
    body = json.loads(json.loads((EVENTS / "http_chat_completions_stream.json").read_text())["body"])
    answer = world.call("chat_completions_stream", key, body={**body, "model": MODEL})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    text = answer.get_body().decode()
    events = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]).strip()
    [usage] = [c["usage"] for c in chunks if c.get("usage")]
    totals = usage_totals(world, key)
    assert totals["requests"] == 1
    assert totals["total_tokens"] == usage["total_tokens"]


def test_errors_come_in_the_api_error_shape(world: World, acme: tuple[str, str]) -> None:
    key = acme[1]
    bad = world.call("chat_completions_bad_json", key)
    assert bad.status_code == 400
    assert body_of(bad)["error"]["code"] == "invalid_json"
    missing = world.call("unknown_route_not_found", key)
    assert missing.status_code == 404
    upstream = chat(world, key, model="fault-500")
    assert upstream.status_code in (502, 503)
    assert body_of(upstream)["error"]["message"]
    too_big = world.call("chat_completions_bad_json", key, body="x" * (1_048_576 + 10))
    assert too_big.status_code == 413
    assert body_of(too_big)["error"]["type"]
    assert too_big.headers["x-request-id"]


def test_many_invocations_at_once_share_the_workers_one_loop(world: World) -> None:
    keys = [world.tenant(f"concurrent-{n}")[1] for n in range(8)] * 2
    fn = FUNCTIONS["api"].get_user_function()
    body = json.loads(json.loads((EVENTS / "http_chat_completions_ok.json").read_text())["body"])

    async def all_at_once() -> list[int]:
        calls = [
            fn(http_request("chat_completions_ok", key, body={**body, "model": MODEL}), Context(f"c{i}"))
            for i, key in enumerate(keys)
        ]
        return [answer.status_code for answer in await asyncio.gather(*calls)]

    assert world.worker.run(all_at_once()) == [200] * len(keys)


def test_a_worker_without_its_settings_says_so_plainly(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEXTNLP_COSMOS_ENDPOINT", raising=False)
    bootstrap.reset()
    try:
        answer = world.call("models_list_ok", ADMIN_KEY)
        assert answer.status_code == 503
        error = body_of(answer)["error"]
        assert error["code"] == "startup_failed"
        assert "TEXTNLP_COSMOS_ENDPOINT" in error["message"]
    finally:
        monkeypatch.undo()
        bootstrap.reset()
    assert world.call("models_list_ok", ADMIN_KEY).status_code == 200


# -- files and batches on Blob Storage ------------------------------------------------------------------------


def test_files_and_an_api_batch_live_on_blob_storage_and_run_through_the_batch_function(world: World) -> None:
    tenant, key = world.tenant("files")
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": MODEL, "messages": [{"role": "user", "content": f"say {i} things"}], "max_tokens": 8}}
        for i in range(3)
    ]  # fmt: skip
    content = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    body = multipart({"purpose": "batch"}, {"file": ("in.jsonl", content)})
    upload = world.call(
        "generate_ok",
        key,
        path="/v1/files",
        body=body,
        headers={"content-type": "multipart/form-data; boundary=b0undary"},
    )
    assert upload.status_code in (200, 201), upload.get_body()
    file_id = body_of(upload)["id"]
    assert list(world.blobs.list_blob_names(name_starts_with=f"files/{tenant}/")), "the upload is a blob"
    read = world.call("generate_ok", key, method="GET", path=f"/v1/files/{file_id}/content", body=None)
    assert read.get_body() == content

    sample = json.loads(json.loads((EVENTS / "http_batches_create_ok.json").read_text())["body"])
    created = world.call("batches_create_ok", key, body={**sample, "input_file_id": file_id})
    assert created.status_code in (200, 201), created.get_body()
    batch_id = body_of(created)["id"]
    job_name = f"batch-input/.jobs/{tenant}/{batch_id}.json"
    job = world.get(job_name)
    assert job is not None, "the job blob is written before the answer"
    etag = str(world.blobs.get_blob_client(job_name).get_blob_properties().etag).strip('"')
    world.deliver(world.created(job_name, etag, len(job), "blob_created_job_message"))
    done = body_of(world.call("generate_ok", key, method="GET", path=f"/v1/batches/{batch_id}", body=None))
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    output = world.call("generate_ok", key, method="GET", path=f"/v1/files/{done['output_file_id']}/content", body=None)
    assert sorted(json.loads(line)["custom_id"] for line in output.get_body().splitlines()) == ["r0", "r1", "r2"]


def test_fine_tuning_runs_on_azure_ml_where_a_workspace_compute_and_image_are_configured() -> None:
    from adapters.azure.azureml_training import AzureMLTrainingTuner
    from functions.azure.bootstrap import AzureSettings, fine_tuner

    configured = AzureSettings(
        azureml_subscription="sub1",
        azureml_resource_group="rg1",
        azureml_workspace="ws1",
        azureml_compute="gpu",
        training_image="img:1",
        blob_container="data",
    )
    assert isinstance(fine_tuner(configured), AzureMLTrainingTuner)
    for missing in ("azureml_subscription", "azureml_workspace", "azureml_compute", "training_image"):
        changes: dict[str, Any] = {missing: None}
        assert fine_tuner(dataclasses.replace(configured, **changes)) is None
