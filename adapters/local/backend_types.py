"""The ``local`` backend type: models run in this process (llama.cpp for generation, ONNX for embeddings).

Declared here, built by ``core.backend_types.BackendCatalog`` on first use: importing this module imports
neither llama.cpp nor onnxruntime.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.backend_types import BackendType
from core.ports import InferenceBackend

ENGINES = ("llama.cpp", "onnx")


def _engine(route: Mapping[str, Any]) -> str:
    return str(route.get("engine", "llama.cpp"))


def local_type(n_ctx: int = 2048, n_threads: int | None = None) -> BackendType:
    """``{"type": "local", "engine": "llama.cpp" | "onnx"}``: one backend per engine, counting tokens exactly."""

    def build(engine: str) -> InferenceBackend:
        if engine == "onnx":
            from adapters.local.onnx_embeddings import OnnxMiniLMBackend

            return OnnxMiniLMBackend()
        from adapters.local.llama_backend import LlamaCppBackend

        return LlamaCppBackend(n_ctx=n_ctx, n_threads=n_threads)

    return BackendType("local", build, choices={"engine": ENGINES}, instance=_engine, counts_tokens=True)
