"""``AzureMLRoute``: a registry ``backend`` entry for an Azure ML online endpoint, parsed and checked."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from adapters.azure.azureml_errors import misconfigured

Format = Literal["hf", "text", "chat", "openai"]
FORMATS: tuple[Format, ...] = ("hf", "text", "chat", "openai")
Auth = Literal["key", "entra"]
AUTHS: tuple[Auth, ...] = ("key", "entra")
ChatTemplate = Literal["chatml", "llama3", "none"]
CHAT_TEMPLATES: tuple[ChatTemplate, ...] = ("chatml", "llama3", "none")
# Above the 5 s the azure-ai-ml SDK gives a deployment (request_settings.request_timeout_ms): an LLM needs longer.
DEFAULT_TIMEOUT_S = 90.0
_URL = re.compile(r"^https?://[^/?#@\s]+(/[^?#\s]*)?$")
# A deployment name as Azure ML allows it (letters, digits, dashes; 3-32 characters): nothing that reshapes a header.
_DEPLOYMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class AzureMLRoute:
    """``{"type": "azureml", "scoring_uri": ..., "format": "hf"}`` and the optional fields.

    ``scoring_uri``: the endpoint's scoring URI (``https://<endpoint>.<region>.inference.ml.azure.com/score``); for
    ``openai`` the base URL the OpenAI paths follow (``.../v1``: ``/chat/completions``, ``/completions``).
    ``format``: ``hf`` (Hugging Face ``inputs``/``parameters``), ``text`` (the curated text models'
    ``input_data.input_string``), ``chat`` (the curated chat models' messages in ``input_string``), ``openai``
    (serverless and vLLM deployments; streams). ``deployment``: sent as ``azureml-model-deployment`` (bypasses
    the endpoint's traffic split). ``auth``: ``key`` (the endpoint key, from the environment variable named by
    ``key_env``, else the backend's configured key) or ``entra`` (a Microsoft Entra token). ``model``: the
    ``model`` of an ``openai`` body. ``chat_template``: how ``hf`` and ``text`` render a chat as one prompt.
    ``timeout_s``: the read timeout.
    """

    scoring_uri: str
    format: Format
    deployment: str | None = None
    auth: Auth = "key"
    key_env: str | None = None
    model: str | None = None
    chat_template: ChatTemplate = "chatml"
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def parse(cls, route: Mapping[str, Any]) -> AzureMLRoute:
        uri, kind = route.get("scoring_uri"), route.get("format")
        if not (isinstance(uri, str) and uri and kind):
            raise misconfigured("an Azure ML route needs scoring_uri and format")
        if not _URL.match(uri):
            raise misconfigured(f"the Azure ML route's scoring_uri is not an http(s) URL: {uri!r}")
        auth, template = route.get("auth") or "key", route.get("chat_template") or "chatml"
        if kind not in FORMATS or auth not in AUTHS or template not in CHAT_TEMPLATES:
            raise misconfigured(
                f"an Azure ML route needs format in {FORMATS}, auth in {AUTHS} and chat_template in {CHAT_TEMPLATES}"
            )
        deployment, key_env = route.get("deployment"), route.get("key_env")
        if deployment is not None and not (isinstance(deployment, str) and _DEPLOYMENT.match(deployment)):
            raise misconfigured(f"the Azure ML route's deployment is not a deployment name: {deployment!r}")
        if key_env is not None and not (isinstance(key_env, str) and _ENV_NAME.match(key_env)):
            raise misconfigured(f"the Azure ML route's key_env is not an environment variable name: {key_env!r}")
        model, timeout = route.get("model"), route.get("timeout_s")
        return cls(
            scoring_uri=uri.rstrip("/"),
            format=kind,
            deployment=deployment or None,
            auth=auth,
            key_env=key_env or None,
            model=str(model) if model else None,
            chat_template=template,
            timeout_s=float(timeout) if timeout is not None else DEFAULT_TIMEOUT_S,
        )

    @property
    def where(self) -> str:
        """How errors name the endpoint: its host, and the deployment when one is pinned (never a key)."""
        host = urlsplit(self.scoring_uri).netloc
        return f"{host} (deployment {self.deployment})" if self.deployment else host
