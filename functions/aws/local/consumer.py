"""The SQS event source of the batch function: poll the queue, invoke ``functions.aws.batch.handler``.

As Lambda's event source mapping does: up to ``batch_size`` messages per invocation, the records of the
partial batch response stay on the queue (visible again after the queue's visibility timeout, dead-lettered
after 3 receives), the others are deleted. One container, one invocation at a time (the batch function's
runtime is the process's ``bootstrap.runtime()``, separate from the api containers'). The emulator serves
one call at a time, so the queue is polled every ``interval_s`` instead of long-polled.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from functions.aws.local.containers import LambdaContext
from functions.aws.local.stack import REGION

log = logging.getLogger("textnlp.local.aws")

BATCH_TIMEOUT_S = 900.0  # the batch function's timeout in the stack (15 minutes)


class QueueConsumer:
    def __init__(self, sqs: Any, queue_url: str, queue_arn: str, *, batch_size: int = 5, interval_s: float = 1.0):
        self._sqs = sqs
        self._queue_url = queue_url
        self._queue_arn = queue_arn
        self._batch_size = batch_size
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="textnlp-batch-consumer", daemon=True)

    def start(self) -> QueueConsumer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=BATCH_TIMEOUT_S)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                handled = self.poll_once()
            except Exception:  # the emulator going away at shutdown, or a bug: logged, polling goes on
                log.exception("the batch consumer failed")
                handled = 0
            if not handled:
                self._stop.wait(self._interval_s)

    def poll_once(self) -> int:
        """One receive and, if it got messages, one invocation; how many messages it handled."""
        got = self._sqs.receive_message(
            QueueUrl=self._queue_url,
            MaxNumberOfMessages=self._batch_size,
            WaitTimeSeconds=0,
            AttributeNames=["All"],
        ).get("Messages", [])
        if not got:
            return 0
        from functions.aws import batch

        records = [sqs_record(message, self._queue_arn) for message in got]
        context = LambdaContext("textnlp-batch", BATCH_TIMEOUT_S, "batch-1")
        failed = {f["itemIdentifier"] for f in batch.handler({"Records": records}, context)["batchItemFailures"]}
        done = [
            {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]}
            for n, m in enumerate(got)
            if m["MessageId"] not in failed
        ]
        if done:
            self._sqs.delete_message_batch(QueueUrl=self._queue_url, Entries=done)
        if failed:
            log.warning("batch function: %d of %d records failed; left on the queue", len(failed), len(got))
        return len(got)


def sqs_record(message: dict[str, Any], queue_arn: str, region: str = REGION) -> dict[str, Any]:
    """A ReceiveMessage message as Lambda's SQS trigger hands it to the function (one ``Records`` entry)."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": {},
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }
