"""The ``openai`` backend type: any OpenAI-compatible server (vLLM, TGI, llama.cpp server, Ollama).

Declared here, built by ``core.backend_types.BackendCatalog`` on first use (httpx is imported only then).
"""

from __future__ import annotations

from core.backend_types import BackendType
from core.ports import InferenceBackend


def _build(_: str) -> InferenceBackend:
    from adapters.openai_compat.backend import OpenAICompatBackend

    return OpenAICompatBackend()


#: ``{"type": "openai", "base_url": "http://vllm:8000/v1", "model": "..."}``: one backend (and one connection
#: pool per server) for every such route.
OPENAI = BackendType("openai", _build, required=("base_url", "model"))
