"""The deployed stack's resources on an in-process moto server, and the environment the functions read.

What ``cdk/`` deploys and the functions touch: the single table (``create_table``, as the stack makes it),
the idempotency table of the batch function, the versioned bucket whose ``batch-input/*.jsonl`` uploads
notify the batch queue, the queue and its dead-letter queue (3 receives), the signing-keys secret and the
admin-key secret. moto keeps everything in memory: it is gone when the server stops.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from moto.moto_server.threaded_moto_server import ThreadedMotoServer

REGION = "us-east-1"
TABLE = "textnlp"
IDEMPOTENCY_TABLE = "textnlp-idempotency"
BUCKET = "textnlp-local"
QUEUE = "textnlp-batch"
#: The stack's queue: longer than the batch function's 15 minutes, 3 receives before the dead-letter queue.
QUEUE_VISIBILITY_S = 5400
MAX_RECEIVES = 3

#: Fake credentials and no profile: nothing this process starts can reach a real AWS account.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",  # nosec B105 - moto's fake credentials
    "AWS_REGION": REGION,
    "AWS_DEFAULT_REGION": REGION,
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
_UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL")


class _OneAtATime:
    """A WSGI app that lets one call in at a time: DynamoDB applies each call atomically, moto takes no lock,
    so two conditional updates racing on its threaded server could both pass (limits would not hold)."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: Any, start_response: Any) -> list[bytes]:
        with self._lock:
            return list(self._app(environ, start_response))


class AtomicMotoServer(ThreadedMotoServer):
    """moto's threaded server, every call atomic (so SQS is polled without long-polling here)."""

    def _server_entry(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        app = _OneAtATime(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(self._ip_address, self._port, app, True, request_handler=MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()

    @property
    def url(self) -> str:
        host, port = self.get_host_and_port()
        return f"http://{host}:{port}"


@dataclass(frozen=True)
class LocalStack:
    """The resources made on moto: what the functions' environment names."""

    endpoint_url: str
    queue_url: str
    queue_arn: str
    dlq_url: str
    signing_keys_arn: str
    admin_key_arn: str

    def env(self) -> dict[str, str]:
        """The environment of the api and batch functions, as the stack sets it (plus the emulator's URL)."""
        return {
            "TEXTNLP_TABLE": TABLE,
            "TEXTNLP_BUCKET": BUCKET,
            "TEXTNLP_BATCH_QUEUE_URL": self.queue_url,
            "TEXTNLP_SIGNING_KEYS_SECRET_ARN": self.signing_keys_arn,
            "TEXTNLP_ADMIN_KEY_SECRET_ARN": self.admin_key_arn,
            "TEXTNLP_IDEMPOTENCY_TABLE": IDEMPOTENCY_TABLE,
            "TEXTNLP_AWS_ENDPOINT_URL": self.endpoint_url,
            "POWERTOOLS_SERVICE_NAME": "textnlp",
            "POWERTOOLS_METRICS_NAMESPACE": "TextNLP",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "TEXTNLP_STAGE": "local",
        }


def use_fake_credentials(environ: dict[str, str] | Any = os.environ) -> None:
    """Point every AWS SDK call of this process at nothing real: fake keys, no profile, no metadata."""
    for name in _UNSET:
        environ.pop(name, None)
    environ.update(FAKE_CREDENTIALS)


def client(service: str, endpoint_url: str) -> Any:
    import boto3

    return boto3.client(service, endpoint_url=endpoint_url, region_name=REGION)  # type: ignore[call-overload]


def deploy(endpoint_url: str, admin_key: str) -> LocalStack:
    """Create the stack's resources on the emulator at ``endpoint_url``; ``admin_key`` goes in its secret."""
    from adapters.aws.dynamodb_models import create_table
    from adapters.aws.dynamodb_table import connect

    create_table(connect(endpoint_url, REGION, max_attempts=2), TABLE)
    ddb = client("dynamodb", endpoint_url)
    ddb.create_table(
        TableName=IDEMPOTENCY_TABLE,
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    ddb.update_time_to_live(
        TableName=IDEMPOTENCY_TABLE, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expiration"}
    )
    sqs = client("sqs", endpoint_url)
    dlq_url = sqs.create_queue(QueueName=f"{QUEUE}-dlq")["QueueUrl"]
    redrive = json.dumps({"deadLetterTargetArn": _queue_arn(sqs, dlq_url), "maxReceiveCount": str(MAX_RECEIVES)})
    attributes = {"RedrivePolicy": redrive, "VisibilityTimeout": str(QUEUE_VISIBILITY_S)}
    queue_url = sqs.create_queue(QueueName=QUEUE, Attributes=attributes)["QueueUrl"]
    queue_arn = _queue_arn(sqs, queue_url)
    s3 = client("s3", endpoint_url)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_notification_configuration(
        Bucket=BUCKET, NotificationConfiguration={"QueueConfigurations": [_notification(queue_arn)]}
    )
    secrets = client("secretsmanager", endpoint_url)
    signing = secrets.create_secret(Name="textnlp-signing-keys", SecretString="{}")["ARN"]  # as the stack does
    admin = secrets.create_secret(Name="textnlp-admin-key", SecretString=admin_key)["ARN"]
    return LocalStack(endpoint_url, queue_url, queue_arn, dlq_url, signing, admin)


def _queue_arn(sqs: Any, url: str) -> str:
    arn: str = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return arn


def _notification(queue_arn: str) -> dict[str, Any]:
    rules: Iterable[dict[str, str]] = (
        {"Name": "prefix", "Value": "batch-input/"},
        {"Name": "suffix", "Value": ".jsonl"},
    )
    return {"QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"], "Filter": {"Key": {"FilterRules": list(rules)}}}
