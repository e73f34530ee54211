"""Composition root on AWS: settings read once from the environment, the gateway built once per container.

On its first build with ``TEXTNLP_ADMIN_KEY_SECRET_ARN`` set (the api function), the runtime imports the
bootstrap admin key held in that secret (:func:`seed_admin_key`), the way ``functions.local.bootstrap.seed``
imports ``TEXTNLP_ADMIN_KEY``: a fresh deployment has an admin key without anyone writing to the table.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from functools import cache, partial
from types import ModuleType
from typing import Any

from adapters.aws.backend_types import sagemaker_type
from adapters.openai_compat.backend_type import OPENAI
from core.app import Gateway
from core.auth.admin_bootstrap import ADMIN_TENANT, import_admin_key
from core.backend_types import BackendCatalog
from core.clock import FixedClock
from core.errors import APIError, ServiceUnavailable
from core.observability import LOGGER_NAME, log_event
from core.ports import Store
from core.settings import GatewaySettings

#: The name of the key imported from the admin-key secret; a key of this name is replaced when the secret changes.
SECRET_ADMIN_KEY_NAME = "admin (TEXTNLP_ADMIN_KEY_SECRET_ARN)"  # noqa: S105  # nosec B105 - a record name

#: The Hugging Face PyTorch training Deep Learning Container (override with TEXTNLP_TRAINING_IMAGE).
DEFAULT_TRAINING_IMAGE = (
    "763104351884.dkr.ecr.{region}.amazonaws.com/"
    "huggingface-pytorch-training:2.1.0-transformers4.36.0-gpu-py310-cu121-ubuntu20.04"
)


@dataclass(frozen=True)
class AwsSettings:
    table: str
    bucket: str | None = None
    batch_queue_url: str | None = None
    signing_keys_secret: str | None = None
    admin_key_secret: str | None = None
    idempotency_table: str | None = None
    sagemaker_role_arn: str | None = None
    training_image: str | None = None
    region: str | None = None
    endpoint_url: str | None = None  # tests: moto server
    gateway: GatewaySettings = field(default_factory=GatewaySettings)

    @classmethod
    def from_env(cls) -> AwsSettings:
        env = os.environ
        return cls(
            table=env.get("TEXTNLP_TABLE", "textnlp"),
            bucket=env.get("TEXTNLP_BUCKET"),
            batch_queue_url=env.get("TEXTNLP_BATCH_QUEUE_URL"),
            signing_keys_secret=env.get("TEXTNLP_SIGNING_KEYS_SECRET_ARN"),
            admin_key_secret=env.get("TEXTNLP_ADMIN_KEY_SECRET_ARN"),
            idempotency_table=env.get("TEXTNLP_IDEMPOTENCY_TABLE"),
            sagemaker_role_arn=env.get("TEXTNLP_SAGEMAKER_ROLE_ARN"),
            training_image=env.get("TEXTNLP_TRAINING_IMAGE"),
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
            endpoint_url=env.get("TEXTNLP_AWS_ENDPOINT_URL"),
            gateway=GatewaySettings(
                log_level=env.get("POWERTOOLS_LOG_LEVEL", "INFO"),
                cache_enabled=env.get("TEXTNLP_CACHE", "on") != "off",
                # Lambda gives a container one request at a time: nothing to overlap, so store calls stay on
                # the loop (no thread hop, and X-Ray's thread-local context keeps each call under its handler).
                store_threads=int(env.get("TEXTNLP_STORE_THREADS", "0")),
                # DynamoDB takes ~1,000 write units a second per partition: a busy tenant's counters spread over
                # up to this many items (core.budget_shards), each kept under 400 writes a second.
                counter_shards=int(env.get("TEXTNLP_COUNTER_SHARDS", "64")),
                counter_shards_start=int(env.get("TEXTNLP_COUNTER_SHARDS_START", "1")),
                counter_item_writes_per_s=float(env.get("TEXTNLP_COUNTER_ITEM_WRITES", "400")),
            ),
        )


class AwsBackends(BackendCatalog):
    """BackendResolver of the AWS functions: SageMaker endpoints and OpenAI-compatible servers, each built on
    first use. With ``endpoint_url`` (an emulator) SageMaker calls go there."""

    def __init__(self, region: str | None = None, endpoint_url: str | None = None) -> None:
        client = None if endpoint_url is None else partial(_local_sagemaker_client, region, endpoint_url)
        super().__init__((sagemaker_type(client), OPENAI), "AWS")


def _local_sagemaker_client(region: str | None, endpoint_url: str) -> Any:
    """A client on the emulator, configured like the SageMaker adapter's own clients."""
    from botocore.config import Config

    from adapters.aws.sagemaker import CONNECT_TIMEOUT_S, READ_TIMEOUT_S

    config = Config(
        read_timeout=READ_TIMEOUT_S,
        connect_timeout=CONNECT_TIMEOUT_S,
        retries={"total_max_attempts": 1},
        max_pool_connections=64,
    )
    session = botocore_session()
    with _CLIENT_LOCK:
        return session.create_client("sagemaker-runtime", region_name=region, endpoint_url=endpoint_url, config=config)


class NoJobQueue:
    """Without TEXTNLP_BATCH_QUEUE_URL batches cannot run: core's in-process queue would run them on the
    container's loop only while an invocation runs (frozen in between, lost with the container)."""

    def submit(self, kind: str, tenant_id: str, job_id: str) -> None:
        raise ServiceUnavailable(
            "batches are not configured on this deployment (no TEXTNLP_BATCH_QUEUE_URL)", code="no_job_queue"
        )


@dataclass(eq=False)  # hashable by identity: per-runtime helpers are cached on it
class Runtime:
    """What one container keeps between invocations."""

    gateway: Gateway
    loop: asyncio.AbstractEventLoop
    metrics: Any
    settings: AwsSettings

    def close(self) -> None:
        """Release the loop and the table's connection pool (tests; a container never needs it)."""
        self.loop.close()
        close = getattr(self.gateway.store, "close", None)
        if close is not None:
            close()


_CLIENT_LOCK = threading.Lock()  # a botocore session is not safe to create clients from concurrently


def _client(service: str, settings: AwsSettings) -> Any:
    """A client of the container's botocore session (what ``boto3.client`` returns, without importing boto3:
    ~25 ms of a cold start, with s3transfer, that no client of the api function needs)."""
    session = botocore_session()
    with _CLIENT_LOCK:
        return session.create_client(service, region_name=settings.region, endpoint_url=settings.endpoint_url)


class LazyClient:
    """A client made on first use: most api requests never touch S3 or SQS, and an S3 client alone costs
    ~80 ms of a cold start. Attribute access is forwarded to the real client."""

    def __init__(self, service: str, settings: AwsSettings) -> None:
        self._service = service
        self._settings = settings
        self._made: Any = None
        self._lock = threading.Lock()

    @property
    def made(self) -> bool:
        return self._made is not None

    def __getattr__(self, name: str) -> Any:
        if self._made is None:
            with self._lock:
                if self._made is None:
                    self._made = _client(self._service, self._settings)
        return getattr(self._made, name)


@cache
def botocore_session() -> Any:
    """The container's one botocore session: the runtime's clients and the table's pynamodb connection
    load botocore's endpoint and service data into it once (a session each cost ~100 ms more of a cold
    start). It becomes boto3's default session as soon as boto3 is imported (at once if it is already):
    the adapters that make their own clients with ``boto3.client`` (SageMaker, training, the batch
    function's idempotency table) share it too, while the api's first request never imports boto3."""
    import botocore.session

    from adapters.aws.tracing import after_import

    session = botocore.session.get_session()

    def share(boto3: ModuleType) -> None:
        boto3.setup_default_session(botocore_session=session)

    after_import("boto3", share)
    return session


def _table_connection(settings: AwsSettings) -> Any:
    """The store's pynamodb Connection (``dynamodb_table.connect``: retries, timeouts) on the shared session."""
    from adapters.aws.dynamodb_table import connect

    session = botocore_session()
    connection = connect(settings.endpoint_url, settings.region)

    class SharedSessionConnection(type(connection)):  # type: ignore[misc]
        """pynamodb reads its botocore session through this property (it makes one per Connection)."""

        @property
        def session(self) -> Any:
            return session

    connection.__class__ = SharedSessionConnection
    return connection


def build_runtime(settings: AwsSettings) -> Runtime:
    from adapters.aws.dynamodb import DynamoDBStore
    from adapters.aws.metrics import PowertoolsMetrics

    store = DynamoDBStore(settings.table, _table_connection(settings))
    with _CLIENT_LOCK:  # made now, on this thread: the shared session never makes two clients at once
        _ = store.client
    metrics = PowertoolsMetrics()
    # Secrets Manager: made now only for the admin-key secret, read on every cold start; the signing keys
    # alone (the first access token, or JWKS) make it on first use.
    secrets_client: Any = None
    if settings.admin_key_secret:
        secrets_client = _client("secretsmanager", settings)
        bootstrap_admin_key(store, secrets_client, settings.admin_key_secret)
    elif settings.signing_keys_secret:
        secrets_client = LazyClient("secretsmanager", settings)
    blobs = None
    if settings.bucket:
        from adapters.aws.s3 import S3BlobStore

        blobs = S3BlobStore(settings.bucket, client=LazyClient("s3", settings))  # type: ignore[arg-type]
    signing_keys = None
    if settings.signing_keys_secret:
        from adapters.aws.secrets import SecretsManagerSigningKeys

        signing_keys = SecretsManagerSigningKeys(settings.signing_keys_secret, client=secrets_client)
    jobs: Any = NoJobQueue()
    if settings.batch_queue_url:
        from adapters.aws.sqs import SqsJobQueue

        jobs = SqsJobQueue(settings.batch_queue_url, client=LazyClient("sqs", settings))  # type: ignore[arg-type]
    gateway = Gateway(
        store,
        AwsBackends(settings.region, settings.endpoint_url),
        settings=settings.gateway,
        metrics=metrics,
        blobs=blobs,
        jobs=jobs,
        signing_keys=signing_keys,
        fine_tuner=_fine_tuner(settings),
    )
    return Runtime(gateway, asyncio.new_event_loop(), metrics, settings)


def admin_key_from_secret(value: str | None) -> str | None:
    """The key in the secret's value: the plaintext itself (what the CDK stack generates), or a JSON
    object holding it under ``"key"`` / ``"api_key"`` (a secret an operator wrote by hand)."""
    text = (value or "").strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            return None
        found = data.get("key") or data.get("api_key") if isinstance(data, dict) else None
        return found.strip() if isinstance(found, str) and found.strip() else None
    return text or None


def seed_admin_key(store: Store, plaintext: str, now: float) -> bool:
    """Import ``plaintext`` as the admin tenant's bootstrap key (``core.auth.admin_bootstrap``); True when
    something was written. A warm table costs one GetItem."""
    return import_admin_key(store, plaintext, SECRET_ADMIN_KEY_NAME, FixedClock(now))


def bootstrap_admin_key(store: Store, client: Any, secret_id: str) -> None:
    """Read the admin-key secret and seed it. A failure is logged, not raised: the API keeps serving
    every other key (and the next cold start tries again)."""
    from botocore.exceptions import BotoCoreError, ClientError

    log = logging.getLogger(LOGGER_NAME)
    try:
        value = client.get_secret_value(SecretId=secret_id).get("SecretString")
        plaintext = admin_key_from_secret(value)
        if plaintext is None:
            log_event(log, "admin key secret holds no key", logging.ERROR, secret=secret_id)
            return
        if seed_admin_key(store, plaintext, time.time()):
            log_event(log, "admin key imported from its secret", secret=secret_id, tenant_id=ADMIN_TENANT)
    except (APIError, BotoCoreError, ClientError) as exc:
        # APIError: a key too short to import, or the table unavailable. Never log the value.
        log_event(log, "admin key not imported", logging.ERROR, secret=secret_id, error=f"{type(exc).__name__}: {exc}")


def _fine_tuner(settings: AwsSettings) -> Any:
    """SageMaker training jobs; the ``sagemaker`` boto3 client is created only when a job is started."""
    if not (settings.sagemaker_role_arn and settings.bucket):
        return None
    try:
        from adapters.aws.sagemaker_training import SageMakerTrainingTuner
    except ImportError:  # pragma: no cover - shipped with the adapters
        return None
    region = settings.region or "us-east-1"
    image = settings.training_image or DEFAULT_TRAINING_IMAGE.format(region=region)
    return SageMakerTrainingTuner(settings.sagemaker_role_arn, settings.bucket, image)


@cache
def runtime() -> Runtime:
    """Built on the first invocation of a container (never at import), reused by the next ones."""
    return build_runtime(AwsSettings.from_env())
