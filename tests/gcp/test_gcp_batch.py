"""``functions.gcp.main.batch`` through functions-framework's CloudEvent app, on the emulators.

Objects dropped under ``batch-input/<tenant>/`` of the input bucket, their "object finalized" events (the samples
of ``events/gcp``, ``gcs_*.json``) delivered as Eventarc does: a batch per generation, idempotent, resumable;
bad events acknowledged and logged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from core.batch.records import BATCHES, BatchJob, derived_batch_id
from functions.gcp import bootstrap
from functions.gcp.batch_events import handle_event
from tests.gcp.test_gcp_api import MODEL, World, cloud_event, gcp_world, usage_totals

pytestmark = pytest.mark.gcp


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with gcp_world() as w:
        w.model(MODEL)
        w.model("slow", "fault:slow-150ms")
        yield w


def line(custom_id: str, content: str, model: str = MODEL) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 8}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}).encode()


def outputs(world: World, tenant: str, name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Any]:
    bucket = world.gcs.bucket(world.bucket)
    out = bucket.get_blob(f"batch-output/{tenant}/{name}.jsonl")
    err = bucket.get_blob(f"batch-output/{tenant}/{name}.errors.jsonl")
    assert out is not None
    assert err is not None

    def rows(blob: Any) -> list[dict[str, Any]]:
        return [json.loads(x) for x in blob.download_as_bytes().splitlines() if x.strip()]

    return rows(out), rows(err), out


def test_a_dropped_file_runs_once_per_generation_and_reports_bad_lines(world: World) -> None:
    tenant, key = world.tenant("dropper")
    data = b"\n".join([line("a", "one two three"), b"{not json", line("c", "four five six")]) + b"\n"
    blob = world.put(world.input_bucket, f"batch-input/{tenant}/prompts.jsonl", data)
    delivery = world.finalized(blob)
    assert world.deliver(*delivery).status_code == 200
    rows, errors, out = outputs(world, tenant, "prompts")
    assert sorted(r["custom_id"] for r in rows if r["response"]) == ["a", "c"]
    assert [(e["line"], e["error"]["code"]) for e in errors] == [(2, "invalid_json")]
    charged = usage_totals(world, key)
    assert charged["requests"] == 2

    # The same generation again (Eventarc delivers at least once): one output, one charge.
    assert world.deliver(*delivery).status_code == 200
    _, _, again = outputs(world, tenant, "prompts")
    assert again.generation == out.generation
    assert usage_totals(world, key) == charged
    batch_id = derived_batch_id(tenant, f"gs://{world.input_bucket}/{blob.name}", str(blob.generation))
    doc = bootstrap.runtime().gateway.store.get_document(BATCHES, tenant, batch_id)
    assert doc is not None
    assert BatchJob.from_document(doc).status == "completed"


def test_a_batch_out_of_time_continues_through_its_job_object_and_charges_every_line_once(world: World) -> None:
    tenant, key = world.tenant("long")
    data = b"".join(line(f"r{i}", f"word{i} more words", model="slow") + b"\n" for i in range(6))
    blob = world.put(world.input_bucket, f"batch-input/{tenant}/long.jsonl", data)
    headers, body = world.finalized(blob)
    rt = bootstrap.runtime()
    rt.gateway.batch_settings = type(rt.gateway.batch_settings)(concurrency=1, flush_interval_s=0.05)
    try:
        event = _event_of(headers, body)
        first = handle_event(rt, event, budget_s=0.4)
        assert first.status == "continued"
        job = world.gcs.bucket(world.input_bucket).get_blob(f"batch-jobs/{tenant}/{first.batch_id}.json")
        assert job is not None, "the continuation is a job object: its event resumes the batch"
        _wait_for_lease(rt, tenant, str(first.batch_id))
        assert world.deliver(*world.finalized(job)).status_code == 200
    finally:
        rt.gateway.batch_settings = type(rt.gateway.batch_settings)()
    rows, errors, _ = outputs(world, tenant, "long")
    assert sorted(r["custom_id"] for r in rows if r["response"]) == [f"r{i}" for i in range(6)]
    assert errors == []
    # The line cut by the stop is recorded as cancelled (0 tokens) and runs again under its retry id: the
    # tokens charged are exactly the tokens answered.
    answered = sum(r["response"]["body"]["usage"]["total_tokens"] for r in rows)
    assert usage_totals(world, key)["total_tokens"] == answered
    records = bootstrap.runtime().gateway.store.list_usage(tenant, 0, 4e9)
    assert sum(r.ended == "completed" for r in records) == 6


def test_a_batch_another_runner_holds_fails_the_event_so_that_eventarc_retries_it(world: World) -> None:
    tenant, _ = world.tenant("busy")
    blob = world.put(world.input_bucket, f"batch-input/{tenant}/held.jsonl", line("x", "a b c") + b"\n")
    rt = bootstrap.runtime()
    store = rt.gateway.store
    batch_id = derived_batch_id(tenant, f"gs://{world.input_bucket}/{blob.name}", str(blob.generation))
    held = BatchJob(
        id=batch_id,
        tenant_id=tenant,
        input_key=blob.name,
        output_key=f"batch-output/{tenant}/held.jsonl",
        error_key=f"batch-output/{tenant}/held.errors.jsonl",
        created_at=time.time(),
        key_id="system:bucket",
        scopes=["generate", "embed"],
        input_version=str(blob.generation),
        source="bucket",
        lease_owner="runner_elsewhere",
        lease_until=time.time() + 600,
    )
    store.put_document(BATCHES, held.to_document(), if_absent=True)
    assert world.deliver(*world.finalized(blob)).status_code == 500


@pytest.mark.parametrize(
    ("sample", "data", "expected"),
    [
        ("object_deleted_batch_input", {}, "ignored"),
        ("object_finalized_no_generation", {"generation": None}, "ignored"),
        ("object_finalized_outside_prefix", {}, "ignored"),
        ("object_finalized_empty", {}, "empty"),
        ("object_finalized_batch_input", {"name": "batch-input/nobody/x.jsonl"}, "unknown_tenant"),
    ],
)
def test_bad_events_are_acknowledged_and_change_nothing(
    world: World, sample: str, data: dict[str, Any], expected: str
) -> None:
    base = json.loads(cloud_event({}, sample)[1])["data"]
    fields = {**base, "bucket": world.input_bucket, **data}
    fields = {k: v for k, v in fields.items() if v is not None}
    headers, body = cloud_event(fields, sample)
    assert world.deliver(headers, body).status_code == 200
    assert handle_event(bootstrap.runtime(), _event_of(headers, body)).status == expected


def test_a_missing_object_a_superseded_generation_and_another_bucket_are_ignored(world: World) -> None:
    tenant, _ = world.tenant("gone")
    rt = bootstrap.runtime()
    blob = world.put(world.input_bucket, f"batch-input/{tenant}/v.jsonl", line("a", "x y") + b"\n")
    old = _event_of(*world.finalized(blob))
    world.put(world.input_bucket, blob.name, line("b", "x y z") + b"\n")
    assert handle_event(rt, old).status == "superseded"
    missing = _event_of(*world.finalized(blob, name=f"batch-input/{tenant}/never.jsonl"))
    assert handle_event(rt, missing).status == "missing"
    elsewhere = _event_of(*world.finalized(blob, bucket="some-other-bucket"))
    assert handle_event(rt, elsewhere).status == "ignored"


def test_a_request_that_is_not_a_cloud_event_is_refused_without_running_anything(world: World) -> None:
    answer = world.batch.post("/", json={"hello": "world"})
    assert answer.status_code == 400


def _event_of(headers: dict[str, str], body: bytes) -> Any:
    from cloudevents.http import from_http

    return from_http(headers, body)


def _wait_for_lease(rt: bootstrap.Runtime, tenant: str, batch_id: str) -> None:
    """The stopped runner released its lease (it records where it stopped): the continuation can claim it."""
    doc = rt.gateway.store.get_document(BATCHES, tenant, batch_id)
    assert doc is not None
    assert BatchJob.from_document(doc).lease_owner is None
