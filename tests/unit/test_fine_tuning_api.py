"""Fine-tuning API through the gateway: what POST checks before a job exists, scopes, tenants, listing."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.local.fine_tuner import MESSAGE, UnavailableFineTuner
from core.fine_tuning.job import JOBS, TunerStatus
from tests.fakes import FakeFineTuner, Harness, error_of, json_of, make_harness, training_jsonl

ROUTE = {"type": "local", "name": "gen"}
JOBS_PATH = "/v1/fine_tuning/jobs"


def upload(h: Harness, key: str, content: bytes | None = None, purpose: str = "fine-tune") -> str:
    response = h.upload(training_jsonl() if content is None else content, purpose=purpose, key=key)
    assert response.status == 200, response.body
    file_id: str = json_of(response)["id"]
    return file_id


@pytest.fixture
def tuner() -> FakeFineTuner:
    return FakeFineTuner(script=[TunerStatus("succeeded", ROUTE, trained_tokens=100)])


@pytest.fixture
def h(tuner: FakeFineTuner) -> Harness:
    return make_harness(fine_tuner=tuner)


@pytest.fixture
def key(h: Harness) -> str:
    return h.key_with("fine_tune", "batch", "generate")


def post(h: Harness, key: str, **payload: Any) -> Any:
    return h.call_json("POST", JOBS_PATH, {"model": "fake-gen", **payload}, key=key)


def no_jobs(h: Harness, tuner: FakeFineTuner) -> bool:
    return h.store.list_documents(JOBS, h.tenant.id) == [] and tuner.started == []


def test_bad_training_files_are_rejected_before_a_job_exists(h: Harness, key: str, tuner: FakeFineTuner) -> None:
    batch_file = upload(h, key, b'{"model": "fake-gen", "prompt": "x"}\n', purpose="batch")
    few = upload(h, key, training_jsonl(3))
    mixed = upload(h, key, training_jsonl(6) + training_jsonl(6, kind="completion"))
    other, _ = h.new_tenant("other")
    foreign = upload(h, h.key_with("fine_tune", tenant=other.id))
    good = upload(h, key)
    cases = [
        ({"training_file": "file-nope"}, 404, "training_file", "file_not_found"),
        ({"training_file": foreign}, 404, "training_file", "file_not_found"),
        ({"training_file": batch_file}, 400, "training_file", "invalid_file_purpose"),
        ({"training_file": few}, 400, "training_file", "invalid_training_file"),
        ({"training_file": mixed}, 400, "training_file", "invalid_training_file"),
        ({"training_file": good, "validation_file": batch_file}, 400, "validation_file", "invalid_file_purpose"),
        ({"training_file": good, "validation_file": "file-nope"}, 404, "validation_file", "file_not_found"),
    ]
    for payload, status, param, code in cases:
        response = post(h, key, **payload)
        assert response.status == status, payload
        error = error_of(response)
        assert (error["param"], error["code"]) == (param, code), payload
    assert "line 7" in error_of(post(h, key, training_file=mixed))["message"]
    assert "at least 10" in error_of(post(h, key, training_file=few))["message"]
    # Malformed lines never get that far: the upload itself refuses them, naming the line.
    bad = h.upload(training_jsonl(2) + b'{"prompt": "no completion"}\n', purpose="fine-tune", key=key)
    assert (bad.status, "line 3" in error_of(bad)["message"]) == (400, True)
    assert no_jobs(h, tuner)


def test_the_base_model_must_be_a_generation_model_the_caller_can_see(h: Harness, key: str) -> None:
    good = upload(h, key)
    missing = post(h, key, training_file=good, model="no-such-model")
    assert (missing.status, error_of(missing)["param"]) == (404, "model")
    embedding = post(h, key, training_file=good, model="fake-emb")
    assert (embedding.status, error_of(embedding)["code"]) == (400, "model_not_supported")


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"n_epochs": 51}}, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"n_epochs": "three"}}, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"n_epochs": True}}, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"batch_size": 0}}, "hyperparameters.batch_size"),
        ({"hyperparameters": {"learning_rate_multiplier": 0}}, "hyperparameters.learning_rate_multiplier"),
        ({"hyperparameters": {"learning_rate_multiplier": -1.5}}, "hyperparameters.learning_rate_multiplier"),
        ({"hyperparameters": {"warmup": 3}}, "hyperparameters.warmup"),
        ({"suffix": "has space"}, "suffix"),
        ({"suffix": "x" * 65}, "suffix"),
        ({"seed": -1}, "seed"),
        ({"integrations": [{"type": "wandb", "wandb": {"project": "p"}}]}, "integrations"),
        ({"method": {"type": "dpo"}}, "method.type"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
    ],
)
def test_fields_are_checked(h: Harness, key: str, tuner: FakeFineTuner, payload: dict[str, Any], param: str) -> None:
    response = post(h, key, training_file=upload(h, key), **payload)
    assert response.status == 400, payload
    assert error_of(response)["param"] == param
    assert no_jobs(h, tuner)


def test_hyperparameters_in_either_place_are_kept(h: Harness, key: str) -> None:
    file_id = upload(h, key)
    chosen = {"n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": 2}
    top = json_of(post(h, key, training_file=file_id, hyperparameters=chosen))
    method = {"type": "supervised", "supervised": {"hyperparameters": chosen}}
    nested = json_of(post(h, key, training_file=file_id, method=method))
    for job in (top, nested):
        assert job["hyperparameters"] == {"n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": 2.0}
        assert job["method"]["type"] == "supervised"
    both = post(h, key, training_file=file_id, hyperparameters=chosen, method=method)
    assert both.status == 400
    defaults = json_of(post(h, key, training_file=file_id, seed=42, suffix="support-bot"))
    assert defaults["hyperparameters"] == {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
    assert (defaults["seed"], defaults["user_provided_suffix"]) == (42, "support-bot")


def test_every_route_needs_the_fine_tune_scope(h: Harness, key: str) -> None:
    job = json_of(post(h, key, training_file=upload(h, key)))
    plain = h.key  # generate + embed
    for method, path in (
        ("POST", JOBS_PATH),
        ("GET", JOBS_PATH),
        ("GET", f"{JOBS_PATH}/{job['id']}"),
        ("GET", f"{JOBS_PATH}/{job['id']}/events"),
        ("POST", f"{JOBS_PATH}/{job['id']}/cancel"),
    ):
        response = h.call_json(method, path, {"model": "fake-gen"} if method == "POST" else None, key=plain)
        assert (response.status, error_of(response)["code"]) == (403, "insufficient_scope"), path


def test_other_tenants_see_neither_the_job_nor_its_events_nor_its_model(h: Harness, key: str) -> None:
    job = json_of(post(h, key, training_file=upload(h, key)))
    h.clock.advance(60)
    done = json_of(h.call("GET", f"{JOBS_PATH}/{job['id']}", key=key))
    model = done["fine_tuned_model"]
    assert (done["status"], model) == ("succeeded", f"ft:fake-gen:a:{job['id'][-12:]}")
    other, _ = h.new_tenant("other")
    intruder = h.key_with("fine_tune", "generate", "embed", "batch", tenant=other.id)
    for method, path in (
        ("GET", f"{JOBS_PATH}/{job['id']}"),
        ("GET", f"{JOBS_PATH}/{job['id']}/events"),
        ("POST", f"{JOBS_PATH}/{job['id']}/cancel"),
        ("GET", f"/v1/models/{model}"),
    ):
        assert h.call(method, path, key=intruder).status == 404, path
    assert json_of(h.call("GET", JOBS_PATH, key=intruder))["data"] == []
    assert model not in {m["id"] for m in json_of(h.call("GET", "/v1/models", key=intruder))["data"]}
    chat = {"model": model, "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 4}
    refused = h.call_json("POST", "/v1/chat/completions", chat, key=intruder)
    assert (refused.status, error_of(refused)["code"]) == (404, "model_not_found")
    based = post(h, intruder, training_file=upload(h, intruder), model=model)  # nor train on top of it
    assert (based.status, error_of(based)["param"]) == (404, "model")
    assert h.call_json("POST", "/v1/chat/completions", chat, key=key).status == 200


def test_list_newest_first_with_after_and_limit(h: Harness, key: str) -> None:
    file_id = upload(h, key)
    ids = []
    for _ in range(4):
        ids.append(json_of(post(h, key, training_file=file_id))["id"])
        h.clock.advance(1)
    page = json_of(h.call("GET", JOBS_PATH, key=key, query={"limit": "3"}))
    assert ([j["id"] for j in page["data"]], page["has_more"], page["object"]) == (ids[::-1][:3], True, "list")
    rest = json_of(h.call("GET", JOBS_PATH, key=key, query={"after": page["data"][-1]["id"]}))
    assert ([j["id"] for j in rest["data"]], rest["has_more"]) == ([ids[0]], False)
    assert h.call("GET", JOBS_PATH, key=key, query={"limit": "0"}).status == 400


def test_without_a_tuner_fine_tuning_is_unavailable() -> None:
    h = make_harness()
    key = h.key_with("fine_tune")
    response = post(h, key, training_file=upload(h, key))
    assert (response.status, error_of(response)["code"]) == (400, "fine_tuning_unavailable")
    assert json_of(h.call("GET", JOBS_PATH, key=key))["data"] == []


def test_the_local_runtime_says_plainly_that_it_cannot_train() -> None:
    h = make_harness(fine_tuner=UnavailableFineTuner())
    key = h.key_with("fine_tune")
    file_id = upload(h, key)
    response = post(h, key, training_file=file_id)
    error = error_of(response)
    assert (response.status, error["code"], error["type"]) == (400, "fine_tuning_unavailable", "invalid_request_error")
    assert error["message"] == MESSAGE
    assert "cloud backends" in MESSAGE
    assert h.store.list_documents(JOBS, h.tenant.id) == []  # no job: nothing that could pass for a training run
    assert json_of(h.call("GET", JOBS_PATH, key=key))["data"] == []
    # The request is still checked first: a wrong file is named as such, not hidden behind "unavailable".
    assert error_of(post(h, key, training_file="file-nope"))["code"] == "file_not_found"
    assert error_of(post(h, key, training_file=file_id, model="nope"))["code"] == "model_not_found"
