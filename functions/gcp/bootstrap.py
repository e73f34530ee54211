"""Composition root on Google Cloud: settings read once from the environment, the gateway built once per instance.

``runtime()`` builds on the first request of an instance (never at import) and keeps: the gateway on
Firestore, Cloud Storage and Secret Manager; the instance's event loop (``LoopThread``); the Cloud Logging
metrics. Credentials are loaded first, so an instance without usable credentials fails its first request with
``StartupError`` saying so (and the next request tries again). With ``FIRESTORE_EMULATOR_HOST`` and
``STORAGE_EMULATOR_HOST`` both set (``make serve CLOUD=gcp``, tests) the clients are anonymous.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import threading
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from adapters.gcp.backend_types import vertex_type
from adapters.gcp.metrics import CloudLoggingMetrics
from adapters.openai_compat.backend_type import OPENAI
from core.app import Gateway
from core.auth.admin_bootstrap import import_configured_admin_key
from core.backend_types import BackendCatalog
from core.blob_jobs import BlobJobQueue
from core.errors import ServiceUnavailable
from core.observability import configure_logging
from core.ports import BlobStore, JobQueue, Store
from core.settings import GatewaySettings
from functions.gcp.bucket_jobs import SplitBlobs, bucket_jobs
from functions.gcp.event_loop import LoopThread

if TYPE_CHECKING:
    from google.auth.credentials import Credentials

#: Cloud Run functions' default request timeout, when neither TEXTNLP_TIMEOUT_S nor CLOUD_RUN_TIMEOUT_SECONDS says.
DEFAULT_TIMEOUT_S = 60.0


class StartupError(RuntimeError):
    """The instance cannot serve: credentials that cannot be loaded, a setting missing. Said plainly."""


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


@dataclass(frozen=True)
class GcpSettings:
    project: str | None = None
    bucket: str | None = None  # files/, batch-output/
    input_bucket: str | None = None  # batch-input/, batch-jobs/ (the trigger's bucket); the data bucket if unset
    database: str = "(default)"
    signing_keys_secret: str | None = None  # projects/<project>/secrets/<id>
    admin_key_secret: str | None = None
    admin_key: str | None = None  # TEXTNLP_ADMIN_KEY: the local server's key (imported like the secret's)
    firestore_emulator: str | None = None  # FIRESTORE_EMULATOR_HOST (host:port)
    storage_emulator: str | None = None  # STORAGE_EMULATOR_HOST (http://host:port)
    secret_manager_endpoint: str | None = None  # tests: a local Secret Manager REST server
    vertex_endpoint_url: str | None = None  # tests: a local server speaking Vertex AI's REST API
    metrics_service: str | None = None
    region: str | None = None  # TEXTNLP_GCP_REGION: where fine-tune jobs run and their endpoints live
    training_image: str | None = None  # a Vertex AI training container (TEXTNLP_TRAINING_IMAGE)
    training_service_account: str | None = None  # the account custom jobs run as (Terraform's ``training``)
    timeout_s: float = DEFAULT_TIMEOUT_S  # the function's timeout: a request's deadline, a batch's budget
    batch_concurrency: int = 16  # lines of one batch in flight at once (core.batch.runner.RunnerSettings)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)

    @property
    def emulated(self) -> bool:
        return bool(self.firestore_emulator and self.storage_emulator)

    @classmethod
    def from_env(cls) -> GcpSettings:
        env = os.environ
        return cls(
            project=env.get("TEXTNLP_GCP_PROJECT") or env.get("GOOGLE_CLOUD_PROJECT") or None,
            bucket=env.get("TEXTNLP_BUCKET") or None,
            input_bucket=env.get("TEXTNLP_INPUT_BUCKET") or None,
            database=env.get("TEXTNLP_FIRESTORE_DATABASE") or "(default)",
            signing_keys_secret=env.get("TEXTNLP_SIGNING_KEYS_SECRET") or None,
            admin_key_secret=env.get("TEXTNLP_ADMIN_KEY_SECRET") or None,
            admin_key=env.get("TEXTNLP_ADMIN_KEY") or None,
            firestore_emulator=env.get("FIRESTORE_EMULATOR_HOST") or None,
            storage_emulator=env.get("STORAGE_EMULATOR_HOST") or None,
            secret_manager_endpoint=env.get("TEXTNLP_SECRET_MANAGER_ENDPOINT") or None,
            vertex_endpoint_url=env.get("TEXTNLP_VERTEX_ENDPOINT_URL") or None,
            metrics_service=env.get("TEXTNLP_METRICS_SERVICE") or None,
            region=env.get("TEXTNLP_GCP_REGION") or None,
            training_image=env.get("TEXTNLP_TRAINING_IMAGE") or None,
            training_service_account=env.get("TEXTNLP_TRAINING_SERVICE_ACCOUNT") or None,
            timeout_s=_env_float("TEXTNLP_TIMEOUT_S", _env_float("CLOUD_RUN_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_S)),
            batch_concurrency=int(env.get("TEXTNLP_BATCH_CONCURRENCY", "16")),
            gateway=GatewaySettings(
                log_level=env.get("TEXTNLP_LOG_LEVEL", "INFO"),
                cache_enabled=env.get("TEXTNLP_CACHE", "on") != "off",
                key_cache_ttl_s=_env_float("TEXTNLP_KEY_CACHE_TTL", 5.0),
                tenant_cache_ttl_s=_env_float("TEXTNLP_TENANT_CACHE_TTL", 5.0),
                model_cache_ttl_s=_env_float("TEXTNLP_MODEL_CACHE_TTL", 5.0),
                # An instance serves up to its concurrency (80 by default) at once: Firestore round trips run
                # on these threads, the loop never waits for one.
                store_threads=int(env.get("TEXTNLP_STORE_THREADS", "64")),
                # Firestore sustains about one write per second per document: a busy tenant's counters spread
                # over up to this many documents (core.budget_shards).
                counter_shards=int(env.get("TEXTNLP_COUNTER_SHARDS", "64")),
                counter_shards_start=int(env.get("TEXTNLP_COUNTER_SHARDS_START", "1")),
                counter_item_writes_per_s=float(env.get("TEXTNLP_COUNTER_ITEM_WRITES", "1")),
                # An instance serves many requests at once: it spends slices of budget in memory, up to this
                # many requests' worth each, writing the counters per slice rather than per request.
                counter_slice_requests=int(env.get("TEXTNLP_COUNTER_SLICES", "64")),
                # No reservation writes a minute window's own document (core.static_split): Firestore's one
                # write a second per document would otherwise cap a tenant at tens of requests a second.
                counter_static_minutes=env.get("TEXTNLP_COUNTER_SPLIT", "static") == "static",
            ),
        )


class GcpBackends(BackendCatalog):
    """BackendResolver of the Google Cloud functions: Vertex AI endpoints and OpenAI-compatible servers."""

    def __init__(self, credentials: Credentials | None = None, endpoint_url: str | None = None) -> None:
        factory = None if credentials is None else (lambda: credentials)
        super().__init__((vertex_type(factory, endpoint_url), OPENAI), "Google Cloud")


class NoJobQueue:
    """Without a bucket batches cannot run (their job objects live in it)."""

    def submit(self, kind: str, tenant_id: str, job_id: str) -> None:
        raise ServiceUnavailable(
            "batches are not configured on this deployment (no TEXTNLP_BUCKET)", code="no_job_queue"
        )


@dataclass(eq=False)  # hashable by identity
class Runtime:
    """What one instance keeps between requests."""

    gateway: Gateway
    loop: LoopThread
    metrics: CloudLoggingMetrics
    settings: GcpSettings
    jobs: BlobJobQueue | None = None

    def give_back(self) -> None:
        """At exit (Cloud Run stops an instance with SIGTERM, then its interpreter exits): what the instance's
        budget slices hold goes back to the tenants' counters (``core.budget_slices``)."""
        if not self.loop.loop.is_closed():
            with contextlib.suppress(Exception):  # best effort: unreturned budget is an underspend, never more
                self.loop.run(self.gateway.give_back_budget(), timeout=8.0)

    def close(self) -> None:
        """Stop the loop and release the store (tests, the local server; an instance never needs it)."""
        self.give_back()
        self.loop.close()
        close = getattr(self.gateway.store, "close", None)
        if close is not None:
            close()


def load_credentials(settings: GcpSettings) -> Credentials:
    """Anonymous credentials on the emulators, else Application Default Credentials, loaded now."""
    if settings.emulated:
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()  # type: ignore[no-untyped-call]
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, found_project = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    except DefaultCredentialsError as exc:
        raise StartupError(
            "Google credentials cannot be loaded: run with a service account (Cloud Run functions) or set "
            f"GOOGLE_APPLICATION_CREDENTIALS ({str(exc)[:300]})"
        ) from None
    if not (settings.project or found_project):
        raise StartupError("no Google Cloud project: set TEXTNLP_GCP_PROJECT (or GOOGLE_CLOUD_PROJECT)")
    return credentials


def open_store(settings: GcpSettings, credentials: Credentials) -> Store:
    """The Firestore store on the settings' database (the emulator's when FIRESTORE_EMULATOR_HOST is set)."""
    from google.cloud import firestore

    from adapters.gcp.firestore import FirestoreStore

    client = firestore.Client(
        project=settings.project or "textnlp-local", credentials=credentials, database=settings.database
    )
    return FirestoreStore(client)


def storage_client(settings: GcpSettings, credentials: Credentials) -> Any:
    storage = importlib.import_module("google.cloud.storage")  # untyped: Any
    options = {"api_endpoint": settings.storage_emulator} if settings.storage_emulator else None
    return storage.Client(project=settings.project, credentials=credentials, client_options=options)


def open_blobs(settings: GcpSettings, client: Any) -> BlobStore | None:
    if not settings.bucket:
        return None
    from adapters.gcp.gcs import GCSBlobStore

    data = GCSBlobStore(settings.bucket, client)
    if not settings.input_bucket or settings.input_bucket == settings.bucket:
        return data
    return SplitBlobs(data, GCSBlobStore(settings.input_bucket, client))


def build_runtime(settings: GcpSettings, store: Store | None = None) -> Runtime:
    """The instance's runtime; ``store`` replaces the Firestore store (tests, benches)."""
    configure_logging(settings.gateway.log_level)
    credentials = load_credentials(settings)
    store = store or open_store(settings, credentials)
    metrics = CloudLoggingMetrics(settings.metrics_service)
    blobs = open_blobs(settings, storage_client(settings, credentials)) if settings.bucket else None
    jobs: JobQueue = NoJobQueue()
    queue = None
    if blobs is not None:
        jobs = queue = bucket_jobs(blobs)
    signing_keys = None
    if settings.signing_keys_secret:
        from adapters.gcp.secret_manager import SecretManagerSigningKeys

        signing_keys = SecretManagerSigningKeys(settings.signing_keys_secret, **_secret_manager_options(settings))
    from core.batch.runner import RunnerSettings

    gateway = Gateway(
        store,
        GcpBackends(None if settings.emulated else credentials, settings.vertex_endpoint_url),
        batch_settings=RunnerSettings(concurrency=settings.batch_concurrency),
        settings=settings.gateway,
        metrics=metrics,
        blobs=blobs,
        jobs=jobs,
        signing_keys=signing_keys,
        fine_tuner=fine_tuner(settings),
    )
    bootstrap_admin_key(store, settings)
    runtime = Runtime(gateway, LoopThread(), metrics, settings, queue)
    atexit.register(runtime.give_back)
    return runtime


def fine_tuner(settings: GcpSettings) -> Any:
    """Vertex AI custom jobs (REST; nothing is called before a job starts), where a project, a region, the data
    bucket and a training image are configured; without them the fine-tuning routes say it cannot train."""
    if settings.emulated or not (settings.project and settings.region and settings.bucket and settings.training_image):
        return None
    from adapters.gcp.vertex_training import VertexTrainingTuner

    return VertexTrainingTuner(
        settings.project,
        settings.region,
        settings.bucket,
        settings.training_image,
        service_account=settings.training_service_account,
        api_url=settings.vertex_endpoint_url,
    )


def _secret_manager_options(settings: GcpSettings) -> dict[str, Any]:
    return {"endpoint": settings.secret_manager_endpoint} if settings.secret_manager_endpoint else {}


def bootstrap_admin_key(store: Store, settings: GcpSettings) -> None:
    """Import the deployment's admin key: TEXTNLP_ADMIN_KEY (the local server), else the admin-key secret."""
    read_secret = None
    if settings.admin_key_secret:
        secret = settings.admin_key_secret

        def read_secret() -> str | None:
            from adapters.gcp.secret_manager import SecretManagerAdminKey

            return SecretManagerAdminKey(secret, **_secret_manager_options(settings)).read()

    import_configured_admin_key(store, settings.admin_key, read_secret, settings.admin_key_secret)


_LOCK = threading.Lock()


@cache
def _built() -> Runtime:
    return build_runtime(GcpSettings.from_env())


def runtime() -> Runtime:
    """Built on the first request of an instance (never at import), reused by the next ones; a failed build
    (StartupError) is not kept, so the next request tries again."""
    with _LOCK:  # requests arrive on many threads at once: one build
        return _built()


def reset() -> None:
    """Forget the instance's runtime, closing it (tests, the local server)."""
    with _LOCK:
        if _built.cache_info().currsize:
            _built().close()
        _built.cache_clear()
