"""The backend types the local runtime serves: local models, and OpenAI-compatible servers."""

from __future__ import annotations

from adapters.local.backend_types import local_type
from adapters.openai_compat.backend_type import OPENAI
from core.backend_types import BackendCatalog


class LocalBackends(BackendCatalog):
    """BackendResolver + TokenCounter of ``make serve``: backends are built on first use, once per process."""

    def __init__(self, n_ctx: int = 2048, n_threads: int | None = None) -> None:
        super().__init__((local_type(n_ctx, n_threads), OPENAI), "the local runtime")
