"""A fine-tune job's life through the gateway with a scripted tuner: progress, events, success, failure, cancel."""

from __future__ import annotations

from typing import Any

import pytest

from core.auth import api_keys
from core.errors import BackendError
from core.fine_tuning.job import FineTuneJob, TunerStatus
from core.fine_tuning.records import Event, advance, create_job, load_job, update_job
from tests.fakes import FakeFineTuner, Harness, error_of, json_of, make_harness, training_jsonl

ROUTE = {"type": "local", "name": "gen"}
JOBS_PATH = "/v1/fine_tuning/jobs"
POLL_S = 5.0


def harness(*script: TunerStatus, **tuner_kw: Any) -> tuple[Harness, FakeFineTuner, str]:
    tuner = FakeFineTuner(script=list(script), **tuner_kw)
    h = make_harness(fine_tuner=tuner)
    key, record = api_keys.mint(h.tenant.id, "ft", frozenset({"fine_tune", "generate"}), h.clock.now())
    h.store.put_key(record)
    return h, tuner, key


def start(h: Harness, key: str, **payload: Any) -> dict[str, Any]:
    uploaded = json_of(h.upload(training_jsonl(), purpose="fine-tune", key=key))
    response = h.call_json(
        "POST", JOBS_PATH, {"model": "fake-gen", "training_file": uploaded["id"], **payload}, key=key
    )
    assert response.status == 200, response.body
    job: dict[str, Any] = json_of(response)
    return job


def poll(h: Harness, key: str, job_id: str) -> dict[str, Any]:
    h.clock.advance(POLL_S)
    job: dict[str, Any] = json_of(h.call("GET", f"{JOBS_PATH}/{job_id}", key=key))
    return job


def events(h: Harness, key: str, job_id: str, **query: str) -> list[str]:
    body = json_of(h.call("GET", f"{JOBS_PATH}/{job_id}/events", key=key, query=query))
    assert all(e["object"] == "fine_tuning.job.event" for e in body["data"])
    return [e["message"] for e in body["data"]]


def test_a_job_goes_from_queued_to_succeeded_and_its_model_answers_by_name() -> None:
    h, tuner, key = harness(
        TunerStatus("queued", events=["Starting"]),
        TunerStatus("running", events=["Starting", "Training: epoch 1"]),
        TunerStatus("succeeded", ROUTE, trained_tokens=1234, events=["Starting", "Training: epoch 1", "Completed"]),
    )
    job = start(h, key, suffix="support")
    assert (job["object"], job["status"], job["organization_id"], job["model"]) == (
        "fine_tuning.job",
        "queued",
        h.tenant.id,
        "fake-gen",
    )
    assert (job["fine_tuned_model"], job["finished_at"], job["error"], job["result_files"]) == (None, None, None, [])
    assert job["id"].startswith("ftjob-")
    assert isinstance(job["seed"], int)
    ((started_id, training_key, validation_key),) = tuner.started
    assert (started_id, training_key, validation_key) == (
        job["id"],
        f"files/{h.tenant.id}/{job['training_file']}",
        None,
    )
    assert [poll(h, key, job["id"])["status"] for _ in range(2)] == ["queued", "running"]
    done = poll(h, key, job["id"])
    model = f"ft:fake-gen:support:{job['id'][-12:]}"
    assert (done["status"], done["fine_tuned_model"], done["trained_tokens"]) == ("succeeded", model, 1234)
    assert done["finished_at"] == int(h.clock.now())
    assert events(h, key, job["id"])[::-1] == [
        f"Validating training file: {job['training_file']}",
        "Files validated, moving job to queued state",
        "Training job submitted to fake",
        "Starting",
        "Fine-tuning job started",
        "Training: epoch 1",
        "Completed",
        f"New fine-tuned model created: {model}",
        "The job has successfully completed",
    ]
    card = json_of(h.call("GET", f"/v1/models/{model}", key=key))
    assert (card["owned_by"], card["kind"], card["metadata"]["fine_tuning_job"]) == (
        h.tenant.id,
        "generation",
        job["id"],
    )
    chat = {"model": model, "messages": [{"role": "user", "content": "tuned hello"}], "max_tokens": 4}
    answer = json_of(h.call_json("POST", "/v1/chat/completions", chat, key=key))
    assert (answer["model"], answer["choices"][0]["message"]["content"]) == (model, "tuned hello")
    assert poll(h, key, job["id"]) == done  # a finished job is not asked about again
    assert len(tuner.polls) == 3


def test_the_tuner_is_asked_at_most_once_per_interval() -> None:
    h, tuner, key = harness(TunerStatus("running"))
    job = start(h, key)
    for _ in range(3):
        h.call("GET", f"{JOBS_PATH}/{job['id']}", key=key)
        h.call("GET", JOBS_PATH, key=key)
    assert len(tuner.polls) == 1
    assert poll(h, key, job["id"])["status"] == "running"
    assert len(tuner.polls) == 2


def test_a_status_that_goes_backwards_or_is_unknown_changes_nothing() -> None:
    h, _, key = harness(TunerStatus("running"), TunerStatus("queued"), TunerStatus("exploded"))
    job = start(h, key)
    assert [poll(h, key, job["id"])["status"] for _ in range(3)] == ["running", "running", "running"]


def test_a_failed_training_records_its_reason_and_registers_nothing() -> None:
    h, _, key = harness(TunerStatus("running"), TunerStatus("failed", error="CUDA out of memory", events=["Failed"]))
    job = start(h, key)
    poll(h, key, job["id"])
    failed = poll(h, key, job["id"])
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "training_failed", "message": "CUDA out of memory", "param": None}
    assert failed["fine_tuned_model"] is None
    assert events(h, key, job["id"], limit="1") == ["The job failed: CUDA out of memory"]
    assert not any(m.id.startswith("ft:") for m in h.store.list_models())


def test_success_without_a_model_route_is_a_failure() -> None:
    h, _, key = harness(TunerStatus("succeeded"))
    failed = poll(h, key, start(h, key)["id"])
    assert (failed["status"], failed["fine_tuned_model"]) == ("failed", None)
    assert "no model" in failed["error"]["message"]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (BackendError("no capacity", status=503, code="training_capacity"), "training_capacity"),
        (RuntimeError("bug"), "training_start_failed"),
    ],
)
def test_a_tuner_that_cannot_start_leaves_a_failed_job(error: BaseException, code: str) -> None:
    h, _, key = harness(start_error=error)
    job = start(h, key)
    assert (job["status"], job["error"]["code"]) == ("failed", code)
    assert job["finished_at"] is not None


@pytest.mark.parametrize("state", ["queued", "running"])
def test_cancel_stops_the_training_and_nothing_is_registered_later(state: str) -> None:
    h, tuner, key = harness(TunerStatus(state), TunerStatus("succeeded", ROUTE))
    job = start(h, key)
    assert poll(h, key, job["id"])["status"] == state
    cancelled = json_of(h.call("POST", f"{JOBS_PATH}/{job['id']}/cancel", key=key))
    assert (cancelled["status"], tuner.cancelled) == ("cancelled", [job["id"]])
    assert cancelled["finished_at"] is not None
    again = poll(h, key, job["id"])
    assert (again["status"], again["fine_tuned_model"]) == ("cancelled", None)
    assert not any(m.id.startswith("ft:") for m in h.store.list_models())
    assert json_of(h.call("POST", f"{JOBS_PATH}/{job['id']}/cancel", key=key))["status"] == "cancelled"
    assert events(h, key, job["id"], limit="1") == ["The job was cancelled"]


def test_cancel_while_validating_files_needs_no_backend() -> None:
    h, tuner, key = harness()
    record = FineTuneJob(
        id="ftjob-000000000001abcdefabcdef",
        tenant_id=h.tenant.id,
        key_id="k",
        model="fake-gen",
        training_file="file-1",
        training_key="files/x",
        created_at=h.clock.now(),
        seed=1,
        hyperparameters={},
        base_model_ref="fake-gen",
        backend="fake",
    )
    create_job(h.store, record, [Event("created")], h.clock.now())
    assert poll(h, key, record.id)["status"] == "validating_files"  # not started yet: nothing to ask
    cancelled = json_of(h.call("POST", f"{JOBS_PATH}/{record.id}/cancel", key=key))
    assert (cancelled["status"], tuner.cancelled, tuner.polls) == ("cancelled", [], [])


def test_a_job_whose_start_was_lost_fails_after_the_grace_period() -> None:
    h, _, key = harness()
    record = FineTuneJob(
        id="ftjob-000000000002abcdefabcdef",
        tenant_id=h.tenant.id,
        key_id="k",
        model="fake-gen",
        training_file="file-1",
        training_key="files/x",
        created_at=h.clock.now(),
        seed=1,
        hyperparameters={},
        base_model_ref="fake-gen",
        status="queued",
        backend="fake",
    )
    create_job(h.store, record, [], h.clock.now())
    h.clock.advance(601)
    failed = poll(h, key, record.id)
    assert (failed["status"], failed["error"]["code"]) == ("failed", "training_start_lost")


@pytest.mark.parametrize(("script", "status"), [(TunerStatus("succeeded", ROUTE), "succeeded"), (None, "failed")])
def test_a_finished_job_cannot_be_cancelled(script: TunerStatus | None, status: str) -> None:
    if script is None:
        h, _, key = harness(start_error=BackendError("refused", status=400))
    else:
        h, _, key = harness(script)
    job = start(h, key)
    assert poll(h, key, job["id"])["status"] == status
    response = h.call("POST", f"{JOBS_PATH}/{job['id']}/cancel", key=key)
    assert (response.status, error_of(response)["code"]) == (409, "fine_tuning_job_not_cancellable")


def test_a_cancel_the_backend_refuses_changes_nothing() -> None:
    h, tuner, key = harness(TunerStatus("running"))
    job = start(h, key)
    tuner.cancel_error = BackendError("throttled", status=429)
    response = h.call("POST", f"{JOBS_PATH}/{job['id']}/cancel", key=key)
    assert response.status == 429
    assert poll(h, key, job["id"])["status"] == "running"


def test_a_status_the_backend_cannot_give_leaves_the_job_as_stored() -> None:
    h, tuner, key = harness(TunerStatus("running"))
    job = start(h, key)
    tuner.status_error = BackendError("down", status=502)
    assert poll(h, key, job["id"])["status"] == "queued"


def test_events_page_with_after() -> None:
    h, _, key = harness(TunerStatus("running", events=[f"step {i}" for i in range(1, 6)]))
    job = start(h, key)
    poll(h, key, job["id"])
    first = json_of(h.call("GET", f"{JOBS_PATH}/{job['id']}/events", key=key, query={"limit": "2"}))
    assert ([e["message"] for e in first["data"]], first["has_more"]) == (["step 5", "step 4"], True)
    rest = json_of(h.call("GET", f"{JOBS_PATH}/{job['id']}/events", key=key, query={"after": first["data"][-1]["id"]}))
    assert [e["message"] for e in rest["data"]][:2] == ["step 3", "step 2"]
    assert rest["has_more"] is False


def test_a_job_cancelled_while_its_training_starts_is_stopped_at_once() -> None:
    h, tuner, key = harness(TunerStatus("running"))

    class CancelledMeanwhile(FakeFineTuner):
        def start(self, job: FineTuneJob, training_key: str, validation_key: str | None) -> str:
            stored = load_job(h.store, job.tenant_id, job.id)
            assert stored is not None
            update_job(h.store, stored, lambda j: advance(j, "cancelled", h.clock.now()), h.clock.now())
            return super().start(job, training_key, validation_key)

    racing = CancelledMeanwhile()
    h.gateway.fine_tuning.tuner = racing
    job = start(h, key)
    assert (job["status"], racing.cancelled) == ("cancelled", [job["id"]])
    assert tuner.started == []
