"""The ``vertex`` backend type: Vertex AI endpoints serving vLLM or TGI, over REST.

Declared here, built by ``core.backend_types.BackendCatalog`` on first use (the adapter, and google-auth on its
first token, are imported only then).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from core.backend_types import BackendType
from core.ports import InferenceBackend

if TYPE_CHECKING:
    from google.auth.credentials import Credentials

#: The values of the route's ``api`` and ``chat_template`` (``adapters.gcp.vertex_route`` checks them too).
VERTEX_APIS = ("predict-vllm", "predict-tgi", "openai-chat")
VERTEX_CHAT_TEMPLATES = ("chatml", "llama3", "none")


def vertex_type(credentials: Callable[[], Credentials] | None = None, endpoint_url: str | None = None) -> BackendType:
    """``{"type": "vertex", "project": ..., "location": ..., "endpoint_id": ..., "api": "predict-vllm"}``.

    Without ``credentials`` the adapter uses Application Default Credentials (the function's service account
    on Cloud Run); a runtime on a local server passes a factory of its credentials and that server's
    ``endpoint_url``. One backend (one token cache, one connection pool per event loop) serves every route.
    """

    def build(_: str) -> InferenceBackend:
        from adapters.gcp.vertex import VertexBackend

        return VertexBackend(None if credentials is None else credentials(), endpoint_url=endpoint_url)

    return BackendType(
        "vertex",
        build,
        required=("project", "location", "endpoint_id", "api"),
        choices={"api": VERTEX_APIS, "chat_template": VERTEX_CHAT_TEMPLATES},
    )
