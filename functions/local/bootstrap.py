"""Composition root of the local runtime: settings from the environment, read once, wired once."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from adapters.local.blobs import FileBlobStore
from adapters.local.fine_tuner import UnavailableFineTuner
from adapters.local.prometheus import PrometheusMetrics
from adapters.local.sqlite_store import SQLiteStore
from core.app import Gateway
from core.auth.access_tokens import TokenSettings
from core.auth.admin_bootstrap import ADMIN_TENANT, import_admin_key, mint_first_admin_key
from core.clock import SystemClock, new_id
from core.domain import ModelSpec
from core.observability import configure_logging
from core.ports import Store
from core.settings import GatewaySettings
from functions.local.backends import LocalBackends

ENV_ADMIN_KEY_NAME = "admin (TEXTNLP_ADMIN_KEY)"

DEFAULT_MODELS = (
    ModelSpec(
        id="smollm2-135m-instruct",
        kind="generation",
        backend={"type": "local", "engine": "llama.cpp"},
        context_length=2048,
        max_output_tokens=512,
        owned_by="HuggingFaceTB",
        metadata={"parameters": "135M", "quantisation": "Q4_1", "size_mb": 98, "gpu_memory_gb": 0},
    ),
    ModelSpec(
        id="all-minilm-l6-v2",
        kind="embedding",
        backend={"type": "local", "engine": "onnx"},
        context_length=256,
        max_output_tokens=1,
        owned_by="sentence-transformers",
        metadata={"dimensions": 384, "quantisation": "int8", "size_mb": 23, "gpu_memory_gb": 0},
    ),
)


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


@dataclass(frozen=True)
class LocalSettings:
    data_dir: Path
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    seed_models: bool = True
    n_ctx: int = 2048
    preload: bool = False

    @classmethod
    def from_env(cls) -> LocalSettings:
        env = os.environ
        gateway = GatewaySettings(
            max_body_bytes=int(env.get("TEXTNLP_MAX_BODY_BYTES", "1048576")),
            key_cache_ttl_s=_env_float("TEXTNLP_KEY_CACHE_TTL", 5.0),
            tenant_cache_ttl_s=_env_float("TEXTNLP_TENANT_CACHE_TTL", 5.0),
            model_cache_ttl_s=_env_float("TEXTNLP_MODEL_CACHE_TTL", 5.0),
            max_request_s=_env_float("TEXTNLP_MAX_REQUEST_S", 900.0),
            clock_skew_s=_env_float("TEXTNLP_CLOCK_SKEW_S", 60.0),
            store_threads=int(env.get("TEXTNLP_STORE_THREADS", "64")),
            counter_shards=int(env.get("TEXTNLP_COUNTER_SHARDS", "1")),
            counter_shards_start=int(env.get("TEXTNLP_COUNTER_SHARDS_START", "1")),
            counter_item_writes_per_s=float(env.get("TEXTNLP_COUNTER_ITEM_WRITES", "400")),
            counter_slice_requests=int(env.get("TEXTNLP_COUNTER_SLICES", "0")),
            cache_enabled=env.get("TEXTNLP_CACHE", "on") != "off",
            cache_ttl_s=_env_float("TEXTNLP_CACHE_TTL", 3600.0),
            log_level=env.get("TEXTNLP_LOG_LEVEL", "INFO"),
            tokens=TokenSettings(ttl_s=int(env.get("TEXTNLP_TOKEN_TTL", "900"))),
        )
        return cls(
            data_dir=Path(env.get("TEXTNLP_DATA_DIR", ".textnlp")),
            gateway=gateway,
            seed_models=env.get("TEXTNLP_SEED_MODELS", "1") != "0",
            n_ctx=int(env.get("TEXTNLP_N_CTX", "2048")),
            preload=env.get("TEXTNLP_PRELOAD", "0") == "1",
        )


def open_store(data_dir: Path) -> SQLiteStore:
    data_dir.mkdir(parents=True, exist_ok=True)
    return SQLiteStore(data_dir / "textnlp.db")


def seed(store: Store, admin_key: str | None = None) -> str | None:
    """First start: the default models, the admin tenant, and its key: ``admin_key`` (TEXTNLP_ADMIN_KEY)
    imported, else one minted and returned once."""
    clock = SystemClock()
    now = clock.now()
    for spec in DEFAULT_MODELS:
        if store.get_model(spec.id) is None:
            store.put_model(replace(spec, created_at=now))
    if admin_key:
        import_admin_key(store, admin_key, ENV_ADMIN_KEY_NAME, clock)
        return None
    return mint_first_admin_key(store, clock)


def build_gateway(settings: LocalSettings) -> tuple[Gateway, PrometheusMetrics, LocalBackends]:
    configure_logging(settings.gateway.log_level)
    store = open_store(settings.data_dir)
    metrics = PrometheusMetrics()
    backends = LocalBackends(n_ctx=settings.n_ctx)
    gateway = Gateway(
        store,
        backends,
        settings=settings.gateway,
        metrics=metrics,
        token_counter=backends,
        blobs=FileBlobStore(settings.data_dir),
        fine_tuner=UnavailableFineTuner(),  # says plainly that training runs on the cloud backends
    )
    return gateway, metrics, backends


__all__ = ["ADMIN_TENANT", "LocalSettings", "build_gateway", "new_id", "open_store", "seed"]
