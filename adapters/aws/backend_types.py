"""The ``sagemaker`` backend type: SageMaker real-time endpoints (TGI, LMI).

Declared here, built by ``core.backend_types.BackendCatalog`` on first use (boto3 is imported only then).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.backend_types import BackendType
from core.ports import InferenceBackend


def sagemaker_type(client: Callable[[], Any] | None = None) -> BackendType:
    """``{"type": "sagemaker", "endpoint_name": ...}``. Without ``client`` the adapter makes its own clients
    (one per route region, no botocore retries: core's router retries with backoff and fallbacks); a runtime
    on an emulator passes a factory of its client."""

    def build(_: str) -> InferenceBackend:
        from adapters.aws.sagemaker import SageMakerBackend

        return SageMakerBackend() if client is None else SageMakerBackend(client=client())

    return BackendType("sagemaker", build, required=("endpoint_name",))
