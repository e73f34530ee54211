"""Composition root on AWS: settings read once from the environment, the gateway built once per container."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from core.app import Gateway
from core.errors import BackendError
from core.ports import InferenceBackend
from core.settings import GatewaySettings

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
            ),
        )


class AwsBackends:
    """BackendResolver: SageMaker endpoints and OpenAI-compatible servers, each built on first use."""

    def __init__(self, region: str | None = None, endpoint_url: str | None = None) -> None:
        self._region = region
        self._endpoint_url = endpoint_url
        self._lock = threading.Lock()
        self._built: dict[str, InferenceBackend] = {}

    def backend_for(self, route: Mapping[str, Any]) -> InferenceBackend:
        kind = str(route.get("type", ""))
        backend = self._built.get(kind)
        if backend is None:
            with self._lock:
                backend = self._built.get(kind) or self._build(kind)
                self._built[kind] = backend
        return backend

    def _build(self, kind: str) -> InferenceBackend:
        if kind == "sagemaker":
            import boto3

            from adapters.aws.sagemaker import SageMakerBackend

            client = boto3.client("sagemaker-runtime", region_name=self._region, endpoint_url=self._endpoint_url)
            return SageMakerBackend(client=client)
        if kind == "openai":
            from adapters.openai_compat.backend import OpenAICompatBackend

            return OpenAICompatBackend()
        raise BackendError(
            f"backend type '{kind}' is not available on AWS; use 'sagemaker' or 'openai'",
            status=501,
            code="backend_unavailable",
        )


@dataclass
class Runtime:
    """What one container keeps between invocations."""

    gateway: Gateway
    loop: asyncio.AbstractEventLoop
    metrics: Any
    settings: AwsSettings


def _client(service: str, settings: AwsSettings) -> Any:
    import boto3

    make: Any = boto3.client  # one helper for several services; each adapter types its own client
    return make(service, region_name=settings.region, endpoint_url=settings.endpoint_url)


def build_runtime(settings: AwsSettings) -> Runtime:
    from adapters.aws.dynamodb import DynamoDBStore
    from adapters.aws.metrics import PowertoolsMetrics

    store = DynamoDBStore(settings.table, host=settings.endpoint_url, region=settings.region)
    metrics = PowertoolsMetrics()
    blobs = None
    if settings.bucket:
        from adapters.aws.s3 import S3BlobStore

        blobs = S3BlobStore(settings.bucket, client=_client("s3", settings))
    signing_keys = None
    if settings.signing_keys_secret:
        from adapters.aws.secrets import SecretsManagerSigningKeys

        signing_keys = SecretsManagerSigningKeys(
            settings.signing_keys_secret, client=_client("secretsmanager", settings)
        )
    jobs = None
    if settings.batch_queue_url:
        from adapters.aws.sqs import SqsJobQueue

        jobs = SqsJobQueue(settings.batch_queue_url, client=_client("sqs", settings))
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
