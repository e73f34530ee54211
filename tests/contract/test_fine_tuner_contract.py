"""FineTuner contract: a stable name; ``check`` refuses (a 4xx ``APIError``) what the tuner cannot train, before
anything is recorded; a tuner that accepts starts a run once however often asked, reports states of the job
state machine, and cancels (a cancelled, never started or ended run is no error). Errors are ``APIError``s.

A tuner that refuses every job (the local runtime) is held to the refusing half: it must refuse ``start`` the
same way and never report a success.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from core.errors import APIError
from core.fine_tuning.job import FineTuneJob, TunerStatus
from core.fine_tuning.states import STATES, TERMINAL
from core.ports import FineTuner


@dataclass
class Subject:
    """``trains``: whether ``check`` accepts a plain job (False: the tuner refuses every job, with ``code``)."""

    tuner: FineTuner
    trains: bool
    refusal_code: str | None = None
    polls_to_settle: int = 5  # status calls after which a backend that finishes at once has finished


@contextmanager
def _local() -> Iterator[Subject]:
    from adapters.local.fine_tuner import UnavailableFineTuner

    yield Subject(UnavailableFineTuner(), trains=False, refusal_code="fine_tuning_unavailable")


@contextmanager
def _sagemaker() -> Iterator[Subject]:
    from adapters.aws.sagemaker_training import SageMakerTrainingTuner
    from tests.contract._backends import boto_client, shared_moto_url

    client = boto_client("sagemaker", shared_moto_url())
    tuner = SageMakerTrainingTuner(
        "arn:aws:iam::123456789012:role/textnlp-training",
        "textnlp-data",
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-training:2.1-transformers4.36-gpu-py310",
        client=client,
        inference_instance_type="ml.g4dn.xlarge",  # moto's instance list predates ml.g5
    )
    yield Subject(tuner, trains=True)  # moto completes training and puts endpoints in service at once


@contextmanager
def _vertex() -> Iterator[Subject]:
    import requests

    from adapters.gcp.vertex_training import VertexTrainingTuner
    from tests.gcp.vertex_jobs_server import shared_vertex_jobs_server

    url, _ = shared_vertex_jobs_server()  # each read of a job moves it on; operations are done at once
    with requests.Session() as session:
        tuner = VertexTrainingTuner(
            "textnlp-test",
            "us-central1",
            "textnlp-data",
            "us-docker.pkg.dev/textnlp-test/training/hf-trainer:1",
            session=session,
            api_url=url,
        )
        yield Subject(tuner, trains=True)


@contextmanager
def _azureml() -> Iterator[Subject]:
    from adapters.azure.azureml_training import AzureMLTrainingTuner
    from tests.azure.azureml_jobs_server import ARGS, shared_azureml_jobs_server, tuner_kwargs

    url, _ = shared_azureml_jobs_server()  # each read of a job moves it on; long-running operations end at once
    yield Subject(AzureMLTrainingTuner(*ARGS, **tuner_kwargs(url)), trains=True, polls_to_settle=6)


#: Every FineTuner adapter: add one entry and the suite runs on it.
ADAPTERS: list[Any] = [
    pytest.param(_local, id="local-unavailable"),
    pytest.param(_sagemaker, id="sagemaker", marks=pytest.mark.aws),
    pytest.param(_vertex, id="vertex", marks=pytest.mark.gcp),
    pytest.param(_azureml, id="azureml", marks=pytest.mark.azure),
]


@pytest.fixture(params=ADAPTERS)
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    factory: Callable[[], AbstractContextManager[Subject]] = request.param
    with factory() as made:
        yield made


def _job() -> FineTuneJob:
    job_id = f"ftjob-{uuid.uuid4().hex[:24]}"  # unique: cloud resources are named after the job
    return FineTuneJob(
        id=job_id,
        tenant_id="ten_a",
        key_id="key_1",
        model="smollm2",
        training_file="file-1",
        training_key="files/ten_a/file-1",
        created_at=1_790_000_000.0,
        seed=42,
        hyperparameters={"n_epochs": 1},
        base_model_ref="HuggingFaceTB/SmolLM2-135M-Instruct",
    )


def _trains(subject: Subject) -> None:
    if not subject.trains:
        pytest.skip(f"{subject.tuner.name}: refuses every job at check(); the refusal is tested instead")


def _check_status(status: TunerStatus) -> None:
    assert isinstance(status, TunerStatus)
    assert status.state in STATES
    assert all(isinstance(event, str) for event in status.events)
    if status.state == "succeeded":
        assert status.fine_tuned_model_route, "a succeeded job names the route of its model"
    if status.state == "failed":
        assert status.error


def test_the_name_is_a_stable_non_empty_string(subject: Subject) -> None:
    assert isinstance(subject.tuner.name, str)
    assert subject.tuner.name
    assert subject.tuner.name == subject.tuner.name


def test_check_accepts_or_refuses_with_a_4xx_api_error(subject: Subject) -> None:
    job = _job()
    if subject.trains:
        subject.tuner.check(job)  # accepts: no error
        return
    with pytest.raises(APIError) as refused:
        subject.tuner.check(job)
    assert 400 <= refused.value.status < 500
    assert refused.value.code == subject.refusal_code
    assert refused.value.message


def test_a_refusing_tuner_refuses_start_alike_and_never_reports_success(subject: Subject) -> None:
    if subject.trains:
        pytest.skip(f"{subject.tuner.name}: accepts jobs; the lifecycle is tested instead")
    job = _job()
    with pytest.raises(APIError) as refused:
        subject.tuner.start(job, job.training_key, None)
    assert (refused.value.status, refused.value.code) == (400, subject.refusal_code)
    status = subject.tuner.status(job)
    _check_status(status)
    assert status.state != "succeeded"
    subject.tuner.cancel(job)  # no error


def test_start_returns_the_runs_id_and_starting_twice_is_harmless(subject: Subject) -> None:
    _trains(subject)
    job = _job()
    first = subject.tuner.start(job, job.training_key, "files/ten_a/file-2")
    assert isinstance(first, str)
    assert first
    assert subject.tuner.start(job, job.training_key, "files/ten_a/file-2") == first


def test_status_moves_along_the_state_machine(subject: Subject) -> None:
    _trains(subject)
    job = _job()
    subject.tuner.start(job, job.training_key, None)
    seen: list[str] = []
    for _ in range(subject.polls_to_settle):
        status = subject.tuner.status(job)
        _check_status(status)
        seen.append(status.state)
    order: dict[str, int] = {state: i for i, state in enumerate(STATES)}
    assert [order[s] for s in seen] == sorted(order[s] for s in seen), seen  # never back
    assert seen[-1] == "succeeded"  # this backend finishes at once
    assert all(s == "succeeded" for s in seen[seen.index("succeeded") :])  # terminal is final


def test_events_only_grow(subject: Subject) -> None:
    """The service records events by position: each poll's list extends the previous one."""
    _trains(subject)
    job = _job()
    subject.tuner.start(job, job.training_key, None)
    previous: list[str] = []
    for _ in range(subject.polls_to_settle):
        events = subject.tuner.status(job).events
        assert events[: len(previous)] == previous
        previous = events


def test_cancel_stops_the_run_and_the_job_ends_cancelled(subject: Subject) -> None:
    _trains(subject)
    job = _job()
    subject.tuner.start(job, job.training_key, None)
    subject.tuner.status(job)
    subject.tuner.cancel(job)
    subject.tuner.cancel(job)  # again: no error
    status = subject.tuner.status(job)
    _check_status(status)
    assert status.state == "cancelled"


def test_cancel_of_a_job_never_started_or_already_ended_is_no_error(subject: Subject) -> None:
    job = _job()
    subject.tuner.cancel(job)  # never started
    if subject.trains:
        subject.tuner.start(job, job.training_key, None)
        for _ in range(subject.polls_to_settle):
            if subject.tuner.status(job).state in TERMINAL:
                break
        subject.tuner.cancel(job)  # ended


def test_status_of_an_unknown_job_is_an_api_error_or_a_failure(subject: Subject) -> None:
    outcome: TunerStatus | APIError
    try:
        outcome = subject.tuner.status(_job())
    except APIError as exc:
        outcome = exc
    if isinstance(outcome, APIError):
        assert outcome.status >= 400
        return
    _check_status(outcome)
    assert outcome.state in ("failed", "cancelled")
