"""How the SageMaker control plane (boto3's ``sagemaker`` client) answers, read: a resource that does not exist,
one that exists already, and the gateway error for any other refusal or failure.

botocore is imported only inside the calls that catch its errors (the exceptions' type is for the type checker).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from core.errors import BackendError

if TYPE_CHECKING:
    from botocore.exceptions import ClientError

_THROTTLING = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException"})
GONE = frozenset({"ResourceNotFound", "ValidationException"})  # StopTrainingJob on an ended or unknown job


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "")


def error_message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message") or "")


def is_missing(exc: ClientError) -> bool:
    """SageMaker's answer for a resource that does not exist: ``Could not find endpoint "..."`` and the like."""
    message = error_message(exc).lower()
    return error_code(exc) in GONE and ("could not find" in message or "not found" in message)


def exists_ok(create: Callable[[], object]) -> None:
    """A Create* call; ``Cannot create already existing ...`` is success (another poll created it first)."""
    from botocore.exceptions import ClientError

    try:
        create()
    except ClientError as exc:
        if not (
            error_code(exc) in ("ValidationException", "ResourceInUse")
            and "already exist" in error_message(exc).lower()
        ):
            raise


def missing_ok(delete: Callable[[], object]) -> None:
    """A Delete* call; a resource that does not exist is deleted already."""
    from botocore.exceptions import ClientError

    try:
        delete()
    except ClientError as exc:
        if not is_missing(exc):
            raise


def training_error(exc: ClientError) -> BackendError:
    """The gateway error for a failed SageMaker control-plane call."""
    code = error_code(exc)
    message = str(exc.response.get("Error", {}).get("Message") or exc)[:500]
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    if code in _THROTTLING or status == 429:
        return BackendError(f"SageMaker is throttling: {message}", status=429, retryable=True, code="backend_throttled")
    if code == "ResourceLimitExceeded":
        return BackendError(f"no SageMaker capacity for this job: {message}", status=503, code="training_capacity")
    if status >= 500:
        return BackendError(f"SageMaker failed ({code or status}): {message}", status=502, retryable=True)
    return BackendError(f"SageMaker refused the call ({code or status}): {message}", code="backend_misconfigured")
