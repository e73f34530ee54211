"""Which backend serves which registry route in the local runtime, and exact token counts."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from core.errors import BackendError
from core.inference import Prompt
from core.ports import InferenceBackend


class LocalBackends:
    """BackendResolver + TokenCounter. Backends are built on first use, once per process."""

    def __init__(self, n_ctx: int = 2048, n_threads: int | None = None) -> None:
        self._n_ctx = n_ctx
        self._n_threads = n_threads
        self._lock = threading.Lock()
        self._instances: dict[str, Any] = {}

    def _get(self, name: str) -> Any:
        instance = self._instances.get(name)
        if instance is not None:
            return instance
        with self._lock:
            if name not in self._instances:
                self._instances[name] = self._build(name)
            return self._instances[name]

    def _build(self, name: str) -> Any:
        if name == "llama.cpp":
            from adapters.local.llama_backend import LlamaCppBackend

            return LlamaCppBackend(n_ctx=self._n_ctx, n_threads=self._n_threads)
        if name == "onnx":
            from adapters.local.onnx_embeddings import OnnxMiniLMBackend

            return OnnxMiniLMBackend()
        if name == "openai":
            from adapters.openai_compat.backend import OpenAICompatBackend

            return OpenAICompatBackend()
        raise BackendError(
            f"backend type '{name}' is not available in the local runtime; deploy to its cloud to use it",
            status=501,
            code="backend_unavailable",
        )

    @staticmethod
    def _name(route: Mapping[str, Any]) -> str:
        kind = str(route.get("type", ""))
        if kind == "local":
            return str(route.get("engine", "llama.cpp"))
        return kind

    def backend_for(self, route: Mapping[str, Any]) -> InferenceBackend:
        backend: InferenceBackend = self._get(self._name(route))
        return backend

    def count(self, route: Mapping[str, Any], prompt: Prompt) -> int | None:
        if route.get("type") != "local":
            return None
        counter = self._get(self._name(route))
        result: int | None = counter.count(route, prompt)
        return result

    def warm(self, route: Mapping[str, Any]) -> None:
        """Load a local model now rather than on the first request."""
        loader = getattr(self._get(self._name(route)), "load", None)
        if loader is not None:
            loader()
