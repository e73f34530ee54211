"""The ``azureml`` backend type: Azure ML online endpoints and serverless deployments, over HTTPS.

Declared here, built by ``core.backend_types.BackendCatalog`` on first use (the adapter, and azure-identity on the
first Entra token, are imported only then).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from core.backend_types import BackendType
from core.ports import InferenceBackend

if TYPE_CHECKING:
    from adapters.azure.azureml_auth import TokenCredential

#: The values of the route's ``format``, ``auth`` and ``chat_template`` (``adapters.azure.azureml_route`` checks
#: them too).
AZUREML_FORMATS = ("hf", "text", "chat", "openai")
AZUREML_AUTHS = ("key", "entra")
AZUREML_CHAT_TEMPLATES = ("chatml", "llama3", "none")


def azureml_type(
    api_key: Callable[[], str | None] | None = None, credential: Callable[[], TokenCredential] | None = None
) -> BackendType:
    """``{"type": "azureml", "scoring_uri": "https://<endpoint>.<region>.inference.ml.azure.com/score",
    "format": "hf"}`` and, optionally, ``deployment``, ``auth``, ``key_env``, ``model``, ``chat_template``,
    ``timeout_s`` (``AzureMLRoute`` says what each does).

    ``api_key``: a factory of the endpoint key for routes that name no ``key_env`` (the runtime's settings, read
    when the backend is built); ``credential``: a factory of the Entra credential (default: azure-identity's
    ``DefaultAzureCredential``, the Function App's managed identity). One backend (one token cache, one
    connection pool per event loop) serves every route.
    """

    def build(_: str) -> InferenceBackend:
        from adapters.azure.azureml import AzureMLBackend

        return AzureMLBackend(
            None if api_key is None else api_key(),
            credential=None if credential is None else credential(),
        )

    return BackendType(
        "azureml",
        build,
        required=("scoring_uri", "format"),
        choices={"format": AZUREML_FORMATS, "auth": AZUREML_AUTHS, "chat_template": AZUREML_CHAT_TEMPLATES},
    )
