"""``VertexRoute``: a registry ``backend`` entry for a Vertex AI endpoint, parsed and checked, and the URLs it calls."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from adapters.gcp.vertex_errors import misconfigured

Api = Literal["predict-vllm", "predict-tgi", "openai-chat"]
APIS: tuple[Api, ...] = ("predict-vllm", "predict-tgi", "openai-chat")
ChatTemplate = Literal["chatml", "llama3", "none"]
CHAT_TEMPLATES: tuple[ChatTemplate, ...] = ("chatml", "llama3", "none")
REQUIRED = ("project", "location", "endpoint_id", "api")
# As the OpenAI-compatible adapter: the largest model timeout the admin API accepts, so the router's fires first.
DEFAULT_TIMEOUT_S = 900.0
# A path segment: what project ids, regions and endpoint ids are made of (nothing that could reshape the URL).
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_BASE_URL = re.compile(r"^https?://[^/?#@\s]+(/[^?#\s]*)?$")


@dataclass(frozen=True, slots=True)
class VertexRoute:
    """``{"type": "vertex", "project", "location", "endpoint_id", "api"}`` and the optional fields.

    ``api``: ``predict-vllm`` (Model Garden vLLM, ``:predict`` with ``prompt``), ``predict-tgi`` (Hugging Face
    TGI, ``:predict`` with ``inputs``, or ``messages`` for a chat), ``openai-chat`` (the endpoint's OpenAI
    chat completions route: chat and token streaming). ``endpoint_url``: where to send the calls instead of
    ``https://{location}-aiplatform.googleapis.com`` (a dedicated endpoint's DNS name, a Private Service
    Connect address, a local server). ``model``: the ``model`` of an ``openai-chat`` body (omitted when
    unset: vLLM then serves its one model). ``chat_template``: how ``predict-vllm`` renders a chat as one prompt.
    """

    project: str
    location: str
    endpoint_id: str
    api: Api
    endpoint_url: str
    model: str | None = None
    chat_template: ChatTemplate = "chatml"
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def parse(cls, route: Mapping[str, Any], default_url: str | None = None) -> VertexRoute:
        """``default_url``: the backend's own ``endpoint_url`` (a runtime on a local server), used when the
        route names none."""
        missing = [name for name in REQUIRED if not route.get(name)]
        if missing:
            raise misconfigured(f"a Vertex AI route needs {', '.join(missing)}")
        project, location, endpoint_id = (str(route[name]) for name in REQUIRED[:3])
        for name, value in (("project", project), ("location", location), ("endpoint_id", endpoint_id)):
            if not _SEGMENT.match(value):
                raise misconfigured(f"the Vertex AI route's {name} is not a valid identifier: {value!r}")
        api, template = route["api"], route.get("chat_template", "chatml")
        if api not in APIS or template not in CHAT_TEMPLATES:
            raise misconfigured(f"a Vertex AI route needs api in {APIS} and chat_template in {CHAT_TEMPLATES}")
        url = str(route.get("endpoint_url") or default_url or _regional_url(location)).rstrip("/")
        if not _BASE_URL.match(url):
            raise misconfigured(f"the Vertex AI route's endpoint_url is not an http(s) base URL: {url!r}")
        model, timeout = route.get("model"), route.get("timeout_s")
        return cls(
            project=project,
            location=location,
            endpoint_id=endpoint_id,
            api=api,
            endpoint_url=url,
            model=str(model) if model else None,
            chat_template=template,
            timeout_s=float(timeout) if timeout is not None else DEFAULT_TIMEOUT_S,
        )

    @property
    def resource(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/endpoints/{self.endpoint_id}"

    @property
    def path(self) -> str:
        """The path of this route's calls, after ``endpoint_url``."""
        if self.api == "openai-chat":
            return f"/v1beta1/{self.resource}/chat/completions"
        return f"/v1/{self.resource}:predict"


def _regional_url(location: str) -> str:
    if location == "global":
        return "https://aiplatform.googleapis.com"
    return f"https://{location}-aiplatform.googleapis.com"
