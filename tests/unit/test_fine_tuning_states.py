"""The fine-tune job state machine and its records: legal transitions only, optimistic concurrency, events."""

from __future__ import annotations

import itertools

import pytest

from adapters.local.memory_store import MemoryStore
from core.fine_tuning.job import JOBS, FineTuneJob, event_id, events_collection
from core.fine_tuning.records import Event, advance, create_job, list_events, load_job, update_job
from core.fine_tuning.states import STATES, TERMINAL, TRANSITIONS, IllegalTransition, check, path

ALLOWED = {
    ("validating_files", "queued"),
    ("validating_files", "failed"),
    ("validating_files", "cancelled"),
    ("queued", "running"),
    ("queued", "failed"),
    ("queued", "cancelled"),
    ("running", "succeeded"),
    ("running", "failed"),
    ("running", "cancelled"),
}


def job(status: str = "validating_files") -> FineTuneJob:
    return FineTuneJob(
        id="ftjob-000000000001abcdefabcdef",
        tenant_id="ten_a",
        key_id="key",
        model="fake-gen",
        training_file="file-1",
        training_key="files/ten_a/file-1",
        created_at=1000.0,
        seed=7,
        hyperparameters={"n_epochs": "auto"},
        base_model_ref="org/base",
        status=status,
    )


@pytest.mark.parametrize(("current", "target"), list(itertools.product(STATES, STATES)))
def test_only_the_designed_transitions_are_allowed(current: str, target: str) -> None:
    if (current, target) in ALLOWED:
        check(current, target)
    else:
        with pytest.raises(IllegalTransition):
            check(current, target)


def test_terminal_states_are_final() -> None:
    assert {s for s in STATES if not TRANSITIONS[s]} == TERMINAL == {"succeeded", "failed", "cancelled"}


def test_paths_walk_forward_only() -> None:
    assert path("queued", "succeeded") == ["running", "succeeded"]
    assert path("validating_files", "succeeded") == ["queued", "running", "succeeded"]
    assert path("validating_files", "failed") == ["failed"]
    assert path("running", "queued") == []
    assert path("succeeded", "failed") == []
    assert path("cancelled", "running") == []
    assert path("queued", "queued") == []


def test_advance_steps_through_and_logs_each_state() -> None:
    j = job()
    events = advance(j, "succeeded", 2000.0)
    assert j.status == "succeeded"
    assert j.finished_at == 2000.0
    assert [e.message for e in events] == [
        "Files validated, moving job to queued state",
        "Fine-tuning job started",
        "The job has successfully completed",
    ]
    with pytest.raises(IllegalTransition):
        advance(j, "running", 2001.0)
    failing = job("running")
    failing.error = {"code": "x", "message": "out of memory", "param": None}
    (event,) = advance(failing, "failed", 3000.0)
    assert (event.level, event.message) == ("error", "The job failed: out of memory")


def test_update_job_reapplies_its_change_over_a_concurrent_write() -> None:
    store = MemoryStore()
    stale = create_job(store, job(), [Event("created")], 1000.0)
    assert stale is not None
    other = update_job(store, stale, lambda j: advance(j, "queued", 1001.0), 1001.0)  # someone else moved it
    assert other.version == stale.version + 1
    moved = update_job(store, stale, lambda j: advance(j, "running", 1002.0), 1002.0)
    assert moved.status == "running"
    assert moved.version == other.version + 1
    assert [e["message"] for e in list_events(store, moved, None, 10)[0]] == [
        "Fine-tuning job started",
        "Files validated, moving job to queued state",
        "created",
    ]


def test_update_job_refuses_an_illegal_transition_and_writes_nothing() -> None:
    store = MemoryStore()
    created = create_job(store, job(), [], 1000.0)
    assert created is not None
    done = update_job(store, created, lambda j: advance(j, "cancelled", 1001.0), 1001.0)
    with pytest.raises(IllegalTransition):
        update_job(store, done, lambda j: advance(j, "running", 1002.0), 1002.0)
    stored = load_job(store, done.tenant_id, done.id)
    assert stored is not None
    assert (stored.status, stored.version) == ("cancelled", done.version)


def test_a_job_id_is_created_once() -> None:
    store = MemoryStore()
    assert create_job(store, job(), [], 1000.0) is not None
    assert create_job(store, job(), [], 1000.0) is None
    assert len(store.list_documents(JOBS, "ten_a")) == 1


def test_events_are_listed_newest_first_with_after_and_limit() -> None:
    store = MemoryStore()
    created = create_job(store, job(), [Event(f"e{i}") for i in range(1, 6)], 1000.0)
    assert created is not None
    assert event_id(created.id, 2) < event_id(created.id, 1)
    page, more = list_events(store, created, None, 2)
    assert ([e["message"] for e in page], more) == (["e5", "e4"], True)
    rest, more = list_events(store, created, page[-1]["id"], 10)
    assert ([e["message"] for e in rest], more) == (["e3", "e2", "e1"], False)
    assert all(d.owner == "ten_a" for d in store.list_documents(events_collection(created.id), "ten_a"))
