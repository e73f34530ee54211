"""SqsJobQueue: long jobs (batches) handed to the batch function through SQS."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient


class SqsJobQueue:
    """``JobQueue`` on SQS: ``submit`` sends ``{"kind", "tenant_id", "job_id"}``; the batch function runs the job.

    Delivery is at least once; jobs are idempotent (a batch resumes where it stopped), so a repeated
    message costs a look at the batch record and nothing more.
    """

    def __init__(self, queue_url: str, client: SQSClient | None = None, delay_s: int = 0) -> None:
        self._queue_url = queue_url
        self._client = client
        self._delay_s = delay_s

    def _sqs(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("sqs")
        return self._client

    def submit(self, kind: str, tenant_id: str, job_id: str) -> None:
        self._sqs().send_message(
            QueueUrl=self._queue_url,
            MessageBody=json.dumps({"kind": kind, "tenant_id": tenant_id, "job_id": job_id}),
            DelaySeconds=self._delay_s,
        )
