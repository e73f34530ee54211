"""``functions.azure.function_app`` ``batch`` through the v2 model's own function object, on the emulators.

Blobs dropped under ``batch-input/<tenant>/`` of the data container on Azurite, their BlobCreated events (the samples
of ``events/azure``, ``eventgrid_*.json``) decoded by the v2 model's converter and delivered as Event Grid does: a
batch per blob name and etag, idempotent, resumable; bad events acknowledged and logged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from core.batch.records import BATCHES, BatchJob, derived_batch_id
from functions.azure import bootstrap
from functions.azure.batch_events import BatchBusy, handle_event
from tests.azure.function_app_world import MODEL, World, azure_world, decoded, event_grid

pytestmark = pytest.mark.azure


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with azure_world() as w:
        w.model(MODEL)
        w.model("slow", "fault:slow-150ms")
        yield w


def line(custom_id: str, content: str, model: str = MODEL) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 8}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}).encode()


def rows(data: bytes | None) -> list[dict[str, Any]]:
    assert data is not None
    return [json.loads(x) for x in data.splitlines() if x.strip()]


def totals(world: World, key: str) -> dict[str, Any]:
    answer = world.call("usage_ok", key)
    assert answer.status_code == 200, answer.get_body()
    found: dict[str, Any] = json.loads(answer.get_body())["totals"]
    return found


def outcome(world: World, event: dict[str, Any], budget_s: float | None = None) -> str:
    rt = bootstrap.runtime()
    return world.worker.run(handle_event(rt, decoded(event), budget_s)).status


def test_a_dropped_file_runs_once_per_etag_and_reports_bad_lines(world: World) -> None:
    tenant, key = world.tenant("dropper")
    data = b"\n".join([line("a", "one two three"), b"{not json", line("c", "four five six")]) + b"\n"
    name = f"batch-input/{tenant}/prompts.jsonl"
    etag = world.put(name, data)
    event = world.created(name, etag, len(data))
    world.deliver(event)
    out = rows(world.get(f"batch-output/{tenant}/prompts.jsonl"))
    errors = rows(world.get(f"batch-output/{tenant}/prompts.errors.jsonl"))
    assert sorted(r["custom_id"] for r in out if r["response"]) == ["a", "c"]
    assert [(e["line"], e["error"]["code"]) for e in errors] == [(2, "invalid_json")]
    charged = totals(world, key)
    assert charged["requests"] == 2

    # The same blob and etag again (Event Grid delivers at least once): one output, one charge.
    props = world.blobs.get_blob_client(f"batch-output/{tenant}/prompts.jsonl").get_blob_properties()
    world.deliver(event)
    again = world.blobs.get_blob_client(f"batch-output/{tenant}/prompts.jsonl").get_blob_properties()
    assert again.etag == props.etag
    assert totals(world, key) == charged
    batch_id = derived_batch_id(tenant, f"azblob://{world.container}/{name}", etag)
    doc = bootstrap.runtime().gateway.store.get_document(BATCHES, tenant, batch_id)
    assert doc is not None
    assert BatchJob.from_document(doc).status == "completed"


def test_the_cloudevents_schema_is_read_as_well(world: World) -> None:
    tenant, _ = world.tenant("cloudevents")
    name = f"batch-input/{tenant}/ce.jsonl"
    data = line("x", "alpha beta") + b"\n"
    etag = world.put(name, data)
    event = event_grid("blob_created_batch_input_cloudevent", eTag=etag, contentLength=len(data))
    event["subject"] = f"/blobServices/default/containers/{world.container}/blobs/{name}"
    assert outcome(world, event) == "completed"
    assert len(rows(world.get(f"batch-output/{tenant}/ce.jsonl"))) == 1


def test_a_batch_out_of_time_continues_through_its_job_blob_and_charges_every_line_once(world: World) -> None:
    tenant, key = world.tenant("long")
    data = b"".join(line(f"r{i}", f"word{i} more words", model="slow") + b"\n" for i in range(6))
    name = f"batch-input/{tenant}/long.jsonl"
    etag = world.put(name, data)
    rt = bootstrap.runtime()
    rt.gateway.batch_settings = type(rt.gateway.batch_settings)(concurrency=1, flush_interval_s=0.05)
    try:
        first = world.worker.run(handle_event(rt, decoded(world.created(name, etag, len(data))), budget_s=0.4))
        assert first.status == "continued"
        job_name = f"batch-input/.jobs/{tenant}/{first.batch_id}.json"
        job = world.get(job_name)
        assert job is not None, "the continuation is a job blob: its event resumes the batch"
        doc = rt.gateway.store.get_document(BATCHES, tenant, str(first.batch_id))
        assert doc is not None
        assert BatchJob.from_document(doc).lease_owner is None, "the stopped runner released its lease"
        job_etag = str(world.blobs.get_blob_client(job_name).get_blob_properties().etag).strip('"')
        world.deliver(world.created(job_name, job_etag, len(job), "blob_created_job_message"))
    finally:
        rt.gateway.batch_settings = type(rt.gateway.batch_settings)()
    out = rows(world.get(f"batch-output/{tenant}/long.jsonl"))
    assert sorted(r["custom_id"] for r in out if r["response"]) == [f"r{i}" for i in range(6)]
    assert rows(world.get(f"batch-output/{tenant}/long.errors.jsonl")) == []
    answered = sum(r["response"]["body"]["usage"]["total_tokens"] for r in out)
    assert totals(world, key)["total_tokens"] == answered
    records = rt.gateway.store.list_usage(tenant, 0, 4e9)
    assert sum(r.ended == "completed" for r in records) == 6


def test_a_batch_another_runner_holds_fails_the_invocation_so_that_event_grid_retries_it(world: World) -> None:
    tenant, _ = world.tenant("busy")
    name = f"batch-input/{tenant}/held.jsonl"
    data = line("x", "a b c") + b"\n"
    etag = world.put(name, data)
    store = bootstrap.runtime().gateway.store
    batch_id = derived_batch_id(tenant, f"azblob://{world.container}/{name}", etag)
    held = BatchJob(
        id=batch_id,
        tenant_id=tenant,
        input_key=name,
        output_key=f"batch-output/{tenant}/held.jsonl",
        error_key=f"batch-output/{tenant}/held.errors.jsonl",
        created_at=time.time(),
        key_id="system:bucket",
        scopes=["generate", "embed"],
        input_version=etag,
        source="bucket",
        lease_owner="runner_elsewhere",
        lease_until=time.time() + 600,
    )
    store.put_document(BATCHES, held.to_document(), if_absent=True)
    with pytest.raises(BatchBusy):
        world.deliver(world.created(name, etag, len(data)))


@pytest.mark.parametrize(
    ("sample", "data", "expected"),
    [
        ("blob_deleted_batch_input", {}, "ignored"),
        ("blob_created_no_etag", {}, "ignored"),
        ("blob_created_bad_data", {}, "ignored"),
        ("blob_created_outside_prefix", {}, "ignored"),
        ("blob_created_empty", {}, "empty"),
        ("blob_created_batch_input", {"blob": "batch-input/nobody/x.jsonl"}, "unknown_tenant"),
        ("blob_created_batch_input", {"blob": "batch-input/acme/nested/x.jsonl"}, "ignored"),
        ("blob_created_batch_input", {"contentLength": "many"}, "ignored"),
        ("blob_created_batch_input", {"api": "CreateFile"}, "ignored"),
        ("blob_created_job_message", {"blob": "batch-input/.jobs/acme/nothing.json"}, "missing"),
    ],
)
def test_bad_events_are_acknowledged_and_change_nothing(
    world: World, sample: str, data: dict[str, Any], expected: str
) -> None:
    fields = dict(data)
    if "blob" in fields:
        fields["blob"] = (world.container, fields["blob"])
    event = event_grid(sample, **fields)
    if "blob" not in data and isinstance(event.get("subject"), str):
        event["subject"] = event["subject"].replace("/containers/textnlp-data/", f"/containers/{world.container}/")
    world.deliver(event)  # acknowledged: no exception, Event Grid does not retry
    assert outcome(world, event) == expected


def test_a_missing_blob_a_superseded_etag_a_bad_job_message_and_another_container_are_ignored(world: World) -> None:
    tenant, _ = world.tenant("gone")
    name = f"batch-input/{tenant}/v.jsonl"
    old = world.put(name, line("a", "x y") + b"\n")
    world.put(name, line("b", "x y z") + b"\n")
    assert outcome(world, world.created(name, old, 10)) == "superseded"
    assert outcome(world, world.created(f"batch-input/{tenant}/never.jsonl", old, 10)) == "missing"
    elsewhere = event_grid("blob_created_batch_input", blob=("some-other-container", name), eTag=old)
    assert outcome(world, elsewhere) == "ignored"
    job_name = f"batch-input/.jobs/{tenant}/batch_x.json"
    etag = world.put(job_name, b'{"kind": "batch", "tenant_id": "someone-else", "job_id": "batch_x"}')
    assert outcome(world, world.created(job_name, etag, 60, "blob_created_job_message")) == "ignored"
    etag = world.put(job_name, b"not json")
    assert outcome(world, world.created(job_name, etag, 8, "blob_created_job_message")) == "ignored"


AZURITE_URL = "http://127.0.0.1:10000/devstoreaccount1/data/batch-input/acme/x.jsonl"
SUBJECT = "/blobServices/default/containers/data/blobs/batch-input/acme/a b.jsonl"


@pytest.mark.parametrize(
    ("subject", "url", "expected"),
    [
        (None, "https://acct.blob.core.windows.net/data/batch-input/acme/a%20b.jsonl", "batch-input/acme/a b.jsonl"),
        (None, AZURITE_URL, "batch-input/acme/x.jsonl"),
        (SUBJECT, "https://ignored/x/y", "batch-input/acme/a b.jsonl"),
    ],
)
def test_the_blob_is_named_by_the_subject_else_by_the_url(subject: str | None, url: str, expected: str) -> None:
    from functions.azure.blob_events import parse_event

    event = event_grid("blob_created_batch_input", url=url, eTag='"0x8DC1"')
    event["subject"] = subject
    blob = parse_event(decoded(event))
    assert (blob.container, blob.name) == ("data", expected)
    assert blob.etag == "0x8DC1", "quotes are not part of the etag"
