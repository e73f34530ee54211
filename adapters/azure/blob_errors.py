"""What a Blob Storage error means to the BlobStore port: a missing or changed blob, a conflict, or a 503.

The client's own retry policy (``azure.storage.blob.ExponentialRetry``, configured by ``open_blob_store``) has
already retried what it can when an error gets here: 408, 5xx (``ServerBusy`` throttling is a 503,
``OperationTimedOut`` and ``InternalError`` are 500s) and connection failures. What still fails becomes:

- ``BlobNotFound`` (404): ``FileNotFoundError``, the port's missing object;
- 412 on a read pinned by ``If-Match`` (the blob was overwritten or deleted meanwhile): ``BlobChanged``, a
  ``FileNotFoundError`` too, as Cloud Storage's store raises when the generation it reads is gone;
- ``BlobAlreadyExists`` (409) or a 412 on a create-only write (``If-None-Match: *``): ``FileExistsError``;
- 503, ``ServerBusy``, 429: ``StoreThrottled``; other 5xx, 408 and connection failures: ``ServiceUnavailable``,
  both 503 ``store_unavailable`` with ``retry-after``;
- anything else is raised as it is: ``ContainerNotFound`` (404), 403 ``AuthorizationPermissionMismatch`` and the
  like are deployment errors, never a missing file.
"""

from __future__ import annotations

from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from core.errors import ServiceUnavailable, StoreThrottled

_BLOB_MISSING = frozenset({"BlobNotFound"})
_BLOB_EXISTS = frozenset({"BlobAlreadyExists"})
_BUSY = frozenset({"ServerBusy", "TooManyRequests"})


class BlobChanged(FileNotFoundError):
    """The blob a pinned read began on was replaced or deleted before the read ended: nothing of the new
    content is mixed into what was read."""


def error_code(exc: AzureError) -> str:
    """The service's ``x-ms-error-code`` (``BlobNotFound``, ``ContainerNotFound``, ``ServerBusy``), or ''."""
    return str(getattr(exc, "error_code", None) or "")


def is_blob_missing(exc: AzureError) -> bool:
    return isinstance(exc, ResourceNotFoundError) and error_code(exc) in _BLOB_MISSING


def translated(exc: AzureError, name: str, *, create_only: bool = False) -> Exception:
    """The exception to raise for ``exc``, met on the blob ``name``."""
    if is_blob_missing(exc):
        return FileNotFoundError(name)
    if isinstance(exc, ResourceExistsError) and error_code(exc) in _BLOB_EXISTS:
        return FileExistsError(name)
    if isinstance(exc, ResourceModifiedError):
        if create_only:
            return FileExistsError(name)
        return BlobChanged(f"{name} changed while it was read")
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return unavailable()
    if isinstance(exc, HttpResponseError):
        status = exc.status_code or 0
        if status in (429, 503) or error_code(exc) in _BUSY:
            return StoreThrottled("Blob Storage is busy; retry shortly")
        if status == 408 or (status >= 500 and status not in (501, 505)):
            return unavailable()
    return exc


def unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "Blob Storage is unavailable or unreachable; retry shortly",
        code="store_unavailable",
        headers={"retry-after": "1"},
    )
