"""JobQueue contract: ``submit(kind, tenant_id, job_id)`` only enqueues, and the consumer then gets exactly that
triple, whatever the kind (the consumer decides what it runs). Delivery is at least once and ``submit`` does
not deduplicate: jobs are idempotent (core/ports.py).

Each adapter comes with its consumer side: the in-process queue calls its handler; on SQS the batch function
reads the message with ``functions.aws.s3_events.parse_body``; for job objects (``core.blob_jobs``, the Google Cloud
and Azure batch functions) each object written raises its creation event, whose function reads the object.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from core.ports import JobQueue

Job = tuple[str, str, str]


@dataclass
class Subject:
    """``queue``; ``delivered()``: what the consumer has received so far (runs the consumer until idle);
    ``received_at_return(job)``: submit, and what the consumer had received at the moment ``submit`` returned."""

    queue: JobQueue
    delivered: Callable[[], list[Job]]
    received_at_return: Callable[[Job], list[Job]]


@contextmanager
def _in_process() -> Iterator[Subject]:
    from core.jobs import InProcessJobQueue

    received: list[Job] = []

    async def handler(kind: str, tenant_id: str, job_id: str) -> None:
        received.append((kind, tenant_id, job_id))

    queue = InProcessJobQueue(handler)
    loop = asyncio.new_event_loop()  # submit needs a running loop: the queue runs jobs as its tasks

    class OnLoop:
        def submit(self, kind: str, tenant_id: str, job_id: str) -> None:
            received_at_return((kind, tenant_id, job_id))

    def received_at_return(job: Job) -> list[Job]:
        async def submit() -> list[Job]:
            queue.submit(*job)
            return list(received)

        return loop.run_until_complete(submit())

    def delivered() -> list[Job]:
        loop.run_until_complete(queue.join())
        return list(received)

    try:
        yield Subject(OnLoop(), delivered, received_at_return)
    finally:
        loop.close()


@contextmanager
def _sqs() -> Iterator[Subject]:
    from adapters.aws.sqs import SqsJobQueue
    from functions.aws.s3_events import JobMessage, parse_body
    from tests.contract._backends import boto_client, shared_moto_url

    client = boto_client("sqs", shared_moto_url())
    url = client.create_queue(QueueName=f"textnlp-jobs-{uuid.uuid4().hex}")["QueueUrl"]
    received: list[Job] = []

    def delivered() -> list[Job]:
        while True:
            messages = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            if not messages.get("Messages"):
                return list(received)
            for message in messages["Messages"]:
                for item in parse_body(message["Body"]):  # as the batch function reads it
                    assert isinstance(item, JobMessage)
                    received.append((item.kind, item.tenant_id, item.job_id))
                client.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])

    queue = SqsJobQueue(url, client)

    def received_at_return(job: Job) -> list[Job]:
        queue.submit(*job)
        return list(received)

    try:
        yield Subject(queue, delivered, received_at_return)
    finally:
        client.delete_queue(QueueUrl=url)


@contextmanager
def _job_objects() -> Iterator[Subject]:
    import json

    from adapters.local.memory_blobs import MemoryBlobStore
    from core.blob_jobs import BlobJobQueue, collect_job_writes

    class Bucket(MemoryBlobStore):
        """Each object written raises its creation event (a new version, a new event: Eventarc, Event Grid)."""

        def __init__(self) -> None:
            super().__init__()
            self.events: list[str] = []

        def write_object(self, key: str, data: bytes) -> None:
            super().write_object(key, data)
            self.events.append(key)

    bucket = Bucket()
    queue = BlobJobQueue(bucket, "batch-jobs/")
    received: list[Job] = []

    def delivered() -> list[Job]:
        while bucket.events:  # the batch function on each event: the object's JSON names the job
            message = json.loads(bucket.read_object(bucket.events.pop(0)))
            received.append((message["kind"], message["tenant_id"], message["job_id"]))
        return list(received)

    def received_at_return(job: Job) -> list[Job]:
        async def in_a_request() -> list[Job]:  # on the loop, as the api function calls it: written off the loop
            collect_job_writes()
            queue.submit(*job)
            await queue.drain()
            return list(received)

        return asyncio.run(in_a_request())

    yield Subject(queue, delivered, received_at_return)


#: Every JobQueue adapter: add one entry and the suite runs on it.
ADAPTERS: list[Any] = [
    pytest.param(_in_process, id="in-process"),
    pytest.param(_sqs, id="sqs", marks=pytest.mark.aws),
    pytest.param(_job_objects, id="job-objects"),
]


@pytest.fixture(params=ADAPTERS)
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    factory: Callable[[], AbstractContextManager[Subject]] = request.param
    with factory() as made:
        yield made


def test_a_submitted_job_reaches_the_consumer_as_submitted(subject: Subject) -> None:
    subject.queue.submit("batch", "ten_a", "batch_123")
    assert subject.delivered() == [("batch", "ten_a", "batch_123")]
    assert subject.delivered() == [("batch", "ten_a", "batch_123")]  # delivered once; nothing else arrives


def test_fields_pass_through_unchanged(subject: Subject) -> None:
    odd = ("batch", 'ten_é ✓/"quoted"', "id with spaces & {json}")
    subject.queue.submit(*odd)
    assert subject.delivered() == [odd]


def test_every_job_of_many_is_delivered(subject: Subject) -> None:
    jobs = [("batch", f"ten_{i % 3}", f"batch_{i}") for i in range(12)]
    for job in jobs:
        subject.queue.submit(*job)
    assert sorted(subject.delivered()) == sorted(jobs)  # order is not promised (SQS standard queues)


def test_any_kind_is_carried_for_the_consumer_to_decide(subject: Subject) -> None:
    subject.queue.submit("fine_tune", "ten_a", "ftjob-1")
    assert subject.delivered() == [("fine_tune", "ten_a", "ftjob-1")]


def test_submit_does_not_deduplicate_a_repeated_job(subject: Subject) -> None:
    """A job submitted twice may run twice (jobs are idempotent): both submissions are delivered."""
    subject.queue.submit("batch", "ten_a", "batch_1")
    subject.queue.submit("batch", "ten_a", "batch_1")
    assert subject.delivered() == [("batch", "ten_a", "batch_1")] * 2


def test_the_same_job_id_under_two_tenants_is_two_jobs(subject: Subject) -> None:
    subject.queue.submit("batch", "ten_a", "batch_1")
    subject.queue.submit("batch", "ten_b", "batch_1")
    assert sorted(subject.delivered()) == [("batch", "ten_a", "batch_1"), ("batch", "ten_b", "batch_1")]


def test_submit_only_enqueues(subject: Subject) -> None:
    """``submit`` returns before the job runs (it is called inside a request): the consumer gets it afterwards."""
    assert subject.received_at_return(("batch", "ten_a", "batch_9")) == []
    assert subject.delivered() == [("batch", "ten_a", "batch_9")]
