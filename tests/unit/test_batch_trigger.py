"""The local bucket trigger: complete files only, the tenant from the folder, resume by version, one poller."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from core.auth import api_keys
from core.batch.records import BATCHES
from core.domain import Limits
from functions.local.batch_trigger import BatchTrigger
from tests.fakes import FakeBackend, Harness, make_harness


def lines(n: int, start: int = 1) -> bytes:
    rows = [{"model": "fake-gen", "prompt": f"row {i} of the drop", "max_tokens": 3} for i in range(start, start + n)]
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def drop(data_dir: Path, tenant: str, name: str, content: bytes) -> Path:
    folder = data_dir / "batch-input" / tenant
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(content)
    return path


async def settle(trigger: BatchTrigger) -> None:
    """Wait for the batches the trigger started."""
    for _ in range(2000):
        if not trigger.running:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("batches still running")


@pytest.fixture
def h() -> Harness:
    return make_harness()


def test_a_dropped_file_runs_once_it_is_complete(h: Harness, tmp_path: Path) -> None:
    path = drop(tmp_path, h.tenant.id, "prompts.jsonl", lines(5) + b"{broken\n")

    async def scenario() -> None:
        trigger = BatchTrigger(h.gateway, tmp_path, poll_s=0.01)
        assert await trigger.poll_once() == []  # first sight: the upload may still be going on
        with path.open("ab") as handle:
            handle.write(lines(2, start=6))  # it was: the file grew
        assert await trigger.poll_once() == []
        assert len(await trigger.poll_once()) == 1  # stable across two polls: complete
        await settle(trigger)
        assert await trigger.poll_once() == []  # finished: not started again
        await trigger.stop()

    asyncio.run(scenario())
    out = tmp_path / "batch-output" / h.tenant.id
    output = [json.loads(line) for line in (out / "prompts.jsonl").read_bytes().splitlines()]
    errors = [json.loads(line) for line in (out / "prompts.errors.jsonl").read_bytes().splitlines()]
    assert [o["line"] for o in output] == list(range(1, 9))
    assert [(e["line"], e["error"]["code"]) for e in errors] == [(6, "invalid_json")]
    assert h.backend.calls == 7
    assert {u.key_id for u in h.usage(h.tenant.id)} == {"system:bucket"}


def test_the_same_version_seen_again_is_the_same_batch(h: Harness, tmp_path: Path) -> None:
    drop(tmp_path, h.tenant.id, "a.jsonl", lines(4))

    async def run_trigger() -> list[str]:
        trigger = BatchTrigger(h.gateway, tmp_path)
        started = (await trigger.poll_once()) + (await trigger.poll_once())
        await settle(trigger)
        await trigger.stop()
        return started

    first = asyncio.run(run_trigger())
    assert len(first) == 1
    assert asyncio.run(run_trigger()) == []  # a restarted process: the version's batch has ended
    assert h.backend.calls == 4
    assert len(h.store.list_documents(BATCHES, h.tenant.id)) == 1


def test_a_restart_mid_batch_resumes_it_without_charging_twice(tmp_path: Path) -> None:
    backend = FakeBackend(delay_s=0.002)
    h = make_harness(backend=backend, limits=Limits(token_quota=10**9))
    drop(tmp_path, h.tenant.id, "big.jsonl", lines(300))

    async def interrupted() -> str:
        trigger = BatchTrigger(h.gateway, tmp_path)
        await trigger.poll_once()
        (batch_id,) = await trigger.poll_once()
        for _ in range(2000):
            if backend.calls >= 100:
                break
            await asyncio.sleep(0.002)
        await trigger.stop()  # the server shuts down mid-batch
        return batch_id

    async def restarted() -> list[str]:
        trigger = BatchTrigger(h.gateway, tmp_path)
        started = (await trigger.poll_once()) + (await trigger.poll_once())
        await settle(trigger)
        await trigger.stop()
        return started

    batch_id = asyncio.run(interrupted())
    assert asyncio.run(restarted()) == [batch_id]
    served = [u for u in h.usage(h.tenant.id) if u.status == 200]
    assert len(served) == len({u.request_id.split(":")[1] for u in served}) == 300
    output = (tmp_path / "batch-output" / h.tenant.id / "big.jsonl").read_bytes().splitlines()
    assert len(output) == 300


def test_folders_of_unknown_tenants_are_skipped_with_one_warning(
    h: Harness, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    drop(tmp_path, "ten_nobody", "x.jsonl", lines(1))
    (tmp_path / "batch-input" / h.tenant.id).mkdir(parents=True)
    (tmp_path / "batch-input" / h.tenant.id / "notes.txt").write_text("not a batch")

    async def polls() -> list[str]:
        trigger = BatchTrigger(h.gateway, tmp_path)
        started = [b for _ in range(3) for b in await trigger.poll_once()]
        await trigger.stop()
        return started

    with caplog.at_level(logging.WARNING, logger="textnlp"):
        assert asyncio.run(polls()) == []
    assert sum("names no tenant" in r.getMessage() for r in caplog.records) == 1
    assert h.backend.calls == 0


def test_only_one_process_polls(h: Harness, tmp_path: Path) -> None:
    first, second = BatchTrigger(h.gateway, tmp_path), BatchTrigger(h.gateway, tmp_path)
    assert first.try_lock() is True
    assert second.try_lock() is False
    asyncio.run(first.stop())  # the holder exits: another takes over
    assert second.try_lock() is True
    asyncio.run(second.stop())


def test_the_poller_restarts_api_batches_whose_runner_died(h: Harness, tmp_path: Path) -> None:
    key, record = api_keys.mint(h.tenant.id, "b", frozenset({"batch", "generate"}), h.clock.now())
    h.store.put_key(record)
    line = {"custom_id": "a", "method": "POST", "url": "/v1/generate", "body": {"model": "fake-gen", "prompt": "x"}}
    file_id = json.loads(h.upload(json.dumps(line).encode(), key=key).body)["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/generate"}
    batch_id = json.loads(h.call_json("POST", "/v1/batches", body, key=key).body)["id"]
    h.jobs.submitted.clear()  # the process that took the batch died before running it

    async def poll() -> None:
        trigger = BatchTrigger(h.gateway, tmp_path)
        await trigger.poll_once()
        await trigger.stop()

    asyncio.run(poll())
    assert h.jobs.submitted == [("batch", h.tenant.id, batch_id)]
    h.run_jobs()
    assert json.loads(h.call("GET", f"/v1/batches/{batch_id}", key=key).body)["status"] == "completed"
