"""Fine-tuning with the official ``openai`` SDK against the local server: the local runtime cannot train,
and says so plainly (400 ``fine_tuning_unavailable``) after checking the request; nothing fakes a job.
"""

from __future__ import annotations

import io
import json
import time

import openai
import pytest

from tests.e2e._support import FAKE_GEN, Server, Tenant

pytestmark = pytest.mark.e2e


def examples(count: int = 10) -> bytes:
    rows = [
        {"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]}
        for i in range(count)
    ]
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


@pytest.fixture
def trainer(server: Server, request: pytest.FixtureRequest) -> Tenant:
    return server.create_tenant(request.node.name[:100], scopes=["generate", "fine_tune"])


@pytest.fixture
def client(server: Server, trainer: Tenant) -> openai.OpenAI:
    # The SDK's default retries stay on: a 400 must not be retried, so the answer comes at once.
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=trainer.key, timeout=60)


def test_the_local_runtime_refuses_to_train_with_a_clear_error(client: openai.OpenAI) -> None:
    uploaded = client.files.create(file=("train.jsonl", io.BytesIO(examples())), purpose="fine-tune")
    assert (uploaded.purpose, uploaded.status) == ("fine-tune", "processed")
    started = time.monotonic()
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(
            model=FAKE_GEN, training_file=uploaded.id, hyperparameters={"n_epochs": 2}, suffix="e2e"
        )
    assert time.monotonic() - started < 2.0  # not retried
    assert err.value.code == "fine_tuning_unavailable"
    assert err.value.status_code == 400
    assert "fine-tuning runs on the cloud backends (SageMaker, Vertex AI, Azure ML)" in err.value.message
    assert "this local runtime cannot train" in err.value.message
    assert client.fine_tuning.jobs.list().data == []  # no job was recorded, so none can look like it ran


def test_the_request_is_still_checked_before_the_refusal(client: openai.OpenAI) -> None:
    uploaded = client.files.create(file=("train.jsonl", examples()), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError) as missing:
        client.fine_tuning.jobs.create(model=FAKE_GEN, training_file="file-does-not-exist")
    assert missing.value.code == "file_not_found"
    with pytest.raises(openai.NotFoundError) as no_model:
        client.fine_tuning.jobs.create(model="no-such-model", training_file=uploaded.id)
    assert no_model.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(model=FAKE_GEN, training_file=uploaded.id, hyperparameters={"n_epochs": 0})
    assert "n_epochs" in bad.value.message
    few = client.files.create(file=("few.jsonl", examples(3)), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as too_few:
        client.fine_tuning.jobs.create(model=FAKE_GEN, training_file=few.id)
    assert "at least 10" in too_few.value.message
    with pytest.raises(openai.BadRequestError) as malformed:
        client.files.create(file=("bad.jsonl", examples(2) + b'{"prompt": "q"}\n'), purpose="fine-tune")
    assert "line 3" in malformed.value.message


def test_retrieve_events_and_cancel_of_an_unknown_job_are_404(client: openai.OpenAI) -> None:
    for call in (
        lambda: client.fine_tuning.jobs.retrieve("ftjob-unknown"),
        lambda: client.fine_tuning.jobs.list_events("ftjob-unknown"),
        lambda: client.fine_tuning.jobs.cancel("ftjob-unknown"),
    ):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.code == "fine_tuning_job_not_found"
    assert list(client.fine_tuning.jobs.list(limit=5)) == []


def test_fine_tuning_needs_the_fine_tune_scope(server: Server) -> None:
    plain = server.create_tenant("no-fine-tune-scope", scopes=["generate"])
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=plain.key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        client.fine_tuning.jobs.list()
    with pytest.raises(openai.PermissionDeniedError):
        client.fine_tuning.jobs.create(model=FAKE_GEN, training_file="file-x")
