"""The stack's settings: CDK context (cdk.json, ``-c key=value``) read once into a frozen object."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from constructs import Node

SAGEMAKER_SIZES = ("small", "medium", "large", "xlarge")
CONTAINERS = ("tgi", "lmi")
ENDPOINT_PREFIX = "textnlp-"
TRAINING_JOB_PREFIX = "textnlp-"
SKIP_LAYER_ENV = "TEXTNLP_SKIP_LAYER_BUILD"


def _text(node: Node, key: str, default: str | None = None) -> str | None:
    value = node.try_get_context(key)
    if value is None or value == "":
        return default
    return str(value)


def _int(node: Node, key: str, default: int, low: int, high: int) -> int:
    raw = node.try_get_context(key)
    value = default if raw is None or raw == "" else int(raw)
    if not low <= value <= high:
        raise ValueError(f"context {key}={value} is outside {low}..{high}")
    return value


def _names(node: Node, key: str) -> tuple[str, ...]:
    raw: Any = node.try_get_context(key)
    if raw is None or raw == "":
        return ()
    items = raw if isinstance(raw, list) else str(raw).split(",")
    return tuple(str(item).strip() for item in items if str(item).strip())


@dataclass(frozen=True)
class SageMakerSettings:
    """The optional GPU endpoint (``-c sagemaker_size=small``)."""

    size: str
    container: str
    image_uri: str | None
    model_data_url: str | None
    hf_model_id: str | None
    num_gpus: int | None


@dataclass(frozen=True)
class StackConfig:
    stage: str
    batch_retention_days: int
    noncurrent_version_days: int
    models_ia_days: int
    log_retention_days: int
    batch_size: int
    batch_max_concurrency: int
    api_rate_limit: int
    api_burst_limit: int
    endpoint_names: tuple[str, ...]
    alarm_email: str | None
    alarm_error_rate_percent: int
    alarm_p99_latency_ms: int
    alarm_model_latency_ms: int
    sagemaker: SageMakerSettings | None
    skip_layer_build: bool

    @property
    def is_prod(self) -> bool:
        return self.stage == "prod"

    @classmethod
    def from_node(cls, node: Node) -> StackConfig:
        stage = _text(node, "stage", "dev") or "dev"
        if stage not in ("dev", "prod"):
            raise ValueError(f"context stage={stage!r}: use dev or prod")
        return cls(
            stage=stage,
            batch_retention_days=_int(node, "batch_retention_days", 30, 1, 3650),
            noncurrent_version_days=_int(node, "noncurrent_version_days", 30, 1, 3650),
            models_ia_days=_int(node, "models_ia_days", 30, 30, 3650),
            log_retention_days=_int(node, "log_retention_days", 30, 1, 3653),
            batch_size=_int(node, "batch_size", 5, 1, 10),
            batch_max_concurrency=_int(node, "batch_max_concurrency", 5, 2, 1000),
            api_rate_limit=_int(node, "api_rate_limit", 50, 1, 10_000),
            api_burst_limit=_int(node, "api_burst_limit", 100, 1, 5_000),
            endpoint_names=_names(node, "sagemaker_endpoint_names"),
            alarm_email=_text(node, "alarm_email"),
            alarm_error_rate_percent=_int(node, "alarm_error_rate_percent", 5, 1, 100),
            alarm_p99_latency_ms=_int(node, "alarm_p99_latency_ms", 20_000, 100, 30_000),
            alarm_model_latency_ms=_int(node, "alarm_model_latency_ms", 15_000, 100, 3_600_000),
            sagemaker=_sagemaker(node),
            skip_layer_build=os.environ.get(SKIP_LAYER_ENV, "") not in ("", "0"),
        )


def _sagemaker(node: Node) -> SageMakerSettings | None:
    size = _text(node, "sagemaker_size")
    if size is None or size == "none":
        return None
    if size not in SAGEMAKER_SIZES:
        raise ValueError(f"context sagemaker_size={size!r}: use one of {', '.join(SAGEMAKER_SIZES)}")
    container = _text(node, "sagemaker_container", "tgi") or "tgi"
    if container not in CONTAINERS:
        raise ValueError(f"context sagemaker_container={container!r}: use tgi or lmi")
    model_data_url = _text(node, "sagemaker_model_data_url")
    hf_model_id = _text(node, "sagemaker_hf_model_id")
    if model_data_url is None and hf_model_id is None:
        raise ValueError("with sagemaker_size, give sagemaker_model_data_url (s3://...) or sagemaker_hf_model_id")
    gpus = _text(node, "sagemaker_num_gpus")
    return SageMakerSettings(
        size=size,
        container=container,
        image_uri=_text(node, "sagemaker_image_uri"),
        model_data_url=model_data_url,
        hf_model_id=hf_model_id,
        num_gpus=int(gpus) if gpus else None,
    )
