"""Composition root on Azure Functions: settings read once from the environment, the gateway built once per worker.

``runtime()`` builds on the first invocation of a worker process (never at import) and keeps: the gateway on
Cosmos DB, Blob Storage and Key Vault, and the Application Insights log-line metrics. Both triggers are async and
run on the Python worker's one event loop, so the build (Cosmos reads its account, the admin key is imported)
runs on a thread (``runtime_async``), and every store call of a request is offloaded by core (``core.offload``).

Credentials: ``TEXTNLP_COSMOS_KEY`` and ``TEXTNLP_STORAGE_CONNECTION_STRING`` are for the emulators (local, tests);
otherwise the Function App's managed identity through azure-identity's ``DefaultAzureCredential``, imported only
then. Budget slices are on (``TEXTNLP_COUNTER_SLICES``, 64: a worker serves many requests at once); what they
hold goes back at exit (``Runtime.give_back``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from adapters.azure.backend_types import azureml_type
from adapters.azure.metrics import AppInsightsLogMetrics
from adapters.openai_compat.backend_type import OPENAI
from core.app import Gateway
from core.auth.admin_bootstrap import import_configured_admin_key
from core.backend_types import BackendCatalog
from core.blob_jobs import BlobJobQueue
from core.errors import ServiceUnavailable
from core.observability import configure_logging
from core.ports import BlobStore, JobQueue, Store
from core.settings import GatewaySettings
from functions.azure.blob_events import JOBS_PREFIX

#: The function timeout host.json sets (functionTimeout 00:10:00) when TEXTNLP_TIMEOUT_S does not say.
DEFAULT_TIMEOUT_S = 600.0
#: Azure's front end drops an HTTP request after 230 s, whatever the function timeout.
HTTP_LIMIT_S = 230.0


class StartupError(RuntimeError):
    """The worker cannot serve: a setting missing, credentials that cannot be made. Said plainly."""


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


@dataclass(frozen=True)
class AzureSettings:
    cosmos_endpoint: str | None = None
    cosmos_database: str = "textnlp"
    cosmos_key: str | None = None  # the emulator's (local, tests); else the managed identity
    storage_account_url: str | None = None
    storage_connection_string: str | None = None  # Azurite's (local, tests); else the managed identity
    blob_container: str | None = None  # files/, batch-input/ (the trigger's), batch-output/
    keyvault_url: str | None = None
    signing_keys_secret: str | None = None
    admin_key_secret: str | None = None
    admin_key: str | None = None  # TEXTNLP_ADMIN_KEY: the local server's key (imported like the secret's)
    azureml_subscription: str | None = None
    azureml_resource_group: str | None = None
    azureml_workspace: str | None = None
    azureml_compute: str | None = None
    azureml_api_url: str | None = None  # tests: a local server speaking Azure ML's REST API
    azureml_datastore: str = "workspaceblobstore"
    training_image: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S  # the function's timeout: a batch's budget
    batch_concurrency: int = 16
    gateway: GatewaySettings = field(default_factory=GatewaySettings)

    @property
    def http_timeout_s(self) -> float:
        return min(self.timeout_s, HTTP_LIMIT_S)

    @classmethod
    def from_env(cls) -> AzureSettings:
        env = os.environ
        return cls(
            cosmos_endpoint=env.get("TEXTNLP_COSMOS_ENDPOINT") or None,
            cosmos_database=env.get("TEXTNLP_COSMOS_DATABASE") or "textnlp",
            cosmos_key=env.get("TEXTNLP_COSMOS_KEY") or None,
            storage_account_url=env.get("TEXTNLP_STORAGE_ACCOUNT_URL") or None,
            storage_connection_string=env.get("TEXTNLP_STORAGE_CONNECTION_STRING") or None,
            blob_container=env.get("TEXTNLP_BLOB_CONTAINER") or None,
            keyvault_url=env.get("TEXTNLP_KEYVAULT_URL") or None,
            signing_keys_secret=env.get("TEXTNLP_SIGNING_KEYS_SECRET") or None,
            admin_key_secret=env.get("TEXTNLP_ADMIN_KEY_SECRET") or None,
            admin_key=env.get("TEXTNLP_ADMIN_KEY") or None,
            azureml_subscription=env.get("TEXTNLP_AZUREML_SUBSCRIPTION") or None,
            azureml_resource_group=env.get("TEXTNLP_AZUREML_RESOURCE_GROUP") or None,
            azureml_workspace=env.get("TEXTNLP_AZUREML_WORKSPACE") or None,
            azureml_compute=env.get("TEXTNLP_AZUREML_COMPUTE") or None,
            azureml_api_url=env.get("TEXTNLP_AZUREML_API_URL") or None,
            azureml_datastore=env.get("TEXTNLP_AZUREML_DATASTORE") or "workspaceblobstore",
            training_image=env.get("TEXTNLP_TRAINING_IMAGE") or None,
            timeout_s=_env_float("TEXTNLP_TIMEOUT_S", DEFAULT_TIMEOUT_S),
            batch_concurrency=int(env.get("TEXTNLP_BATCH_CONCURRENCY", "16")),
            gateway=GatewaySettings(
                log_level=env.get("TEXTNLP_LOG_LEVEL", "INFO"),
                cache_enabled=env.get("TEXTNLP_CACHE", "on") != "off",
                key_cache_ttl_s=_env_float("TEXTNLP_KEY_CACHE_TTL", 5.0),
                tenant_cache_ttl_s=_env_float("TEXTNLP_TENANT_CACHE_TTL", 5.0),
                model_cache_ttl_s=_env_float("TEXTNLP_MODEL_CACHE_TTL", 5.0),
                # A worker serves many requests at once on one loop: Cosmos round trips run on these threads.
                store_threads=int(env.get("TEXTNLP_STORE_THREADS", "64")),
                # A logical partition takes 10,000 RU/s; conditional patches of one item contend (412) well
                # before that: a busy tenant's counters spread over up to this many items (core.budget_shards).
                counter_shards=int(env.get("TEXTNLP_COUNTER_SHARDS", "64")),
                counter_shards_start=int(env.get("TEXTNLP_COUNTER_SHARDS_START", "1")),
                counter_item_writes_per_s=_env_float("TEXTNLP_COUNTER_ITEM_WRITES", 200.0),
                # Slices of budget spent in memory, up to this many requests' worth each (core.budget_slices).
                counter_slice_requests=int(env.get("TEXTNLP_COUNTER_SLICES", "64")),
                # No reservation writes a minute window's own item (core.static_split): in the scale model it
                # serves a quota's worth at 2,000 requests/s on Cosmos DB with no 503 (docs/scale.md).
                counter_static_minutes=env.get("TEXTNLP_COUNTER_SPLIT", "static") == "static",
            ),
        )


class AzureBackends(BackendCatalog):
    """BackendResolver of the Azure functions: Azure ML online endpoints and OpenAI-compatible servers."""

    def __init__(self) -> None:
        super().__init__((azureml_type(), OPENAI), "Azure")


class NoJobQueue:
    """Without a blob container batches cannot run (their job blobs live in it)."""

    def submit(self, kind: str, tenant_id: str, job_id: str) -> None:
        raise ServiceUnavailable(
            "batches are not configured on this deployment (no TEXTNLP_BLOB_CONTAINER)", code="no_job_queue"
        )


@dataclass(eq=False)  # hashable by identity
class Runtime:
    """What one worker process keeps between invocations."""

    gateway: Gateway
    metrics: AppInsightsLogMetrics
    settings: AzureSettings
    jobs: BlobJobQueue | None = None

    def give_back(self) -> None:
        """At exit (atexit, on the main thread with no loop running): what the worker's budget slices hold goes
        back to the tenants' counters, as on every runtime (``Gateway.give_back_budget``; its store steps run in
        place once the interpreter's pools take no more work)."""
        with contextlib.suppress(Exception):  # best effort: unreturned budget is an underspend, never more
            asyncio.run(self.gateway.give_back_budget())

    def close(self) -> None:
        """Give back and release the store (tests, the local host; a worker never needs it)."""
        self.give_back()
        close = getattr(self.gateway.store, "close", None)
        if close is not None:
            close()


def _identity_credential() -> Any:
    """The managed identity (DefaultAzureCredential), made on first need: azure-identity is imported only here."""
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError as exc:  # pragma: no cover - requirements.txt lists it
        raise StartupError(f"azure-identity is not installed ({exc})") from None
    return DefaultAzureCredential()


def open_store(settings: AzureSettings, identity: Callable[[], Any] = _identity_credential) -> Store:
    """The Cosmos DB store: the emulator's key where given, else the managed identity."""
    if not settings.cosmos_endpoint:
        raise StartupError("no Cosmos DB endpoint: set TEXTNLP_COSMOS_ENDPOINT")
    from adapters.azure.cosmos import open_cosmos_store

    if settings.cosmos_key:
        return open_cosmos_store(
            settings.cosmos_endpoint, key=settings.cosmos_key, database=settings.cosmos_database, create=True
        )
    return open_cosmos_store(settings.cosmos_endpoint, credential=identity(), database=settings.cosmos_database)


def open_blobs(settings: AzureSettings, identity: Callable[[], Any] = _identity_credential) -> BlobStore | None:
    """The data container (Azurite's connection string where given, else the account URL and managed identity)."""
    if not settings.blob_container:
        return None
    from adapters.azure.blob import open_blob_store

    if settings.storage_connection_string:
        return open_blob_store(
            connection_string=settings.storage_connection_string, container=settings.blob_container, create=True
        )
    if not settings.storage_account_url:
        raise StartupError("TEXTNLP_BLOB_CONTAINER is set without TEXTNLP_STORAGE_ACCOUNT_URL")
    return open_blob_store(settings.storage_account_url, credential=identity(), container=settings.blob_container)


def build_runtime(settings: AzureSettings, store: Store | None = None, blobs: BlobStore | None = None) -> Runtime:
    """The worker's runtime; ``store`` and ``blobs`` replace Cosmos DB and Blob Storage (tests, benches)."""
    configure_logging(settings.gateway.log_level)
    identity = cache(_identity_credential)  # one credential (one token cache) for Cosmos DB and Blob Storage
    store = store or open_store(settings, identity)
    blobs = blobs or open_blobs(settings, identity)
    metrics = AppInsightsLogMetrics("textnlp")
    jobs: JobQueue = NoJobQueue()
    blob_jobs = None
    if blobs is not None:
        jobs = blob_jobs = BlobJobQueue(blobs, JOBS_PREFIX)
    signing_keys = None
    if settings.keyvault_url and settings.signing_keys_secret:
        from adapters.azure.keyvault import KeyVaultSigningKeys

        signing_keys = KeyVaultSigningKeys(settings.keyvault_url, settings.signing_keys_secret)
    from core.batch.runner import RunnerSettings

    gateway = Gateway(
        store,
        AzureBackends(),
        batch_settings=RunnerSettings(concurrency=settings.batch_concurrency),
        settings=settings.gateway,
        metrics=metrics,
        blobs=blobs,
        jobs=jobs,
        signing_keys=signing_keys,
        fine_tuner=fine_tuner(settings),
    )
    bootstrap_admin_key(store, settings)
    runtime = Runtime(gateway, metrics, settings, blob_jobs)
    atexit.register(runtime.give_back)
    return runtime


def fine_tuner(settings: AzureSettings) -> Any:
    """Azure ML command jobs (REST; nothing is called before a job starts), where the workspace, its compute, a
    training image and the data container are configured; without them the fine-tuning routes say it cannot
    train. The uploaded files are read through the workspace datastore ``TEXTNLP_AZUREML_DATASTORE`` (one
    registered on the data container)."""
    s = settings
    workspace = (s.azureml_subscription, s.azureml_resource_group, s.azureml_workspace, s.azureml_compute)
    if not all(workspace) or not (s.training_image and s.blob_container):
        return None
    from adapters.azure.azureml_training import AzureMLTrainingTuner

    return AzureMLTrainingTuner(
        str(s.azureml_subscription),
        str(s.azureml_resource_group),
        str(s.azureml_workspace),
        str(s.azureml_compute),
        s.training_image,
        s.azureml_datastore,
        api_url=s.azureml_api_url,
    )


def bootstrap_admin_key(store: Store, settings: AzureSettings) -> None:
    """Import the deployment's admin key: TEXTNLP_ADMIN_KEY (the local server), else the Key Vault secret."""
    read_secret = None
    if settings.keyvault_url and settings.admin_key_secret:
        vault, secret = settings.keyvault_url, settings.admin_key_secret

        def read_secret() -> str | None:
            from adapters.azure.keyvault import KeyVaultAdminKey

            return KeyVaultAdminKey(vault, secret).read()

    import_configured_admin_key(store, settings.admin_key, read_secret, settings.admin_key_secret)


_LOCK = threading.Lock()


@cache
def _built() -> Runtime:
    return build_runtime(AzureSettings.from_env())


def runtime() -> Runtime:
    """Built on the first invocation of a worker (never at import), reused by the next ones; a failed build
    (StartupError) is not kept, so the next invocation tries again."""
    with _LOCK:
        return _built()


async def runtime_async() -> Runtime:
    """``runtime()`` from the worker's loop: built on a thread the first time (it blocks on Cosmos, Key Vault)."""
    if _built.cache_info().currsize:
        return _built()
    return await asyncio.to_thread(runtime)


def reset() -> None:
    """Forget the worker's runtime, closing it (tests, the local host)."""
    with _LOCK:
        if _built.cache_info().currsize:
            _built().close()
        _built.cache_clear()
