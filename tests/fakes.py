"""Test doubles shipped with the tests: a scriptable in-process backend and a gateway factory."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from adapters.aws.backend_types import sagemaker_type
from adapters.azure.backend_types import azureml_type
from adapters.gcp.backend_types import vertex_type
from adapters.local.backend_types import local_type
from adapters.local.memory_blobs import MemoryBlobStore
from adapters.local.memory_store import MemoryStore
from adapters.openai_compat.backend_type import OPENAI
from core.app import Gateway
from core.auth import api_keys
from core.backend_types import BackendCatalog
from core.clock import FixedClock
from core.domain import ALL_SCOPES, Limits, ModelSpec, Tenant, UsageRecord
from core.errors import APIError, BackendError
from core.fine_tuning.job import FineTuneJob, TunerStatus
from core.http import Request, Response
from core.inference import Embeddings, Generation, GenerationParams, Prompt, StreamEnd, StreamEvent, TextDelta
from core.ports import FineTuner, TokenCounter
from core.settings import GatewaySettings


def words_of(prompt: Prompt) -> list[str]:
    text = prompt.text if prompt.text is not None else " ".join(m.content for m in prompt.messages)
    return text.split()


@dataclass
class FakeBackend:
    """Echoes the prompt's words, one token per word; ``failures`` are raised first, in order."""

    failures: list[BaseException] = field(default_factory=list)
    calls: int = 0
    delay_s: float = 0.0
    stream_error_after: int | None = None
    stream_error: BackendError = field(default_factory=lambda: BackendError("stream broke", status=502))
    stream_ends: bool = True  # False: the stream stops without its StreamEnd (a cut the adapter missed)
    stream_usage: bool = True  # False: the StreamEnd carries no token counts

    def _answer(self, prompt: Prompt, params: GenerationParams) -> Generation:
        words = words_of(prompt)
        out = words[: params.max_tokens]
        return Generation(
            text=" ".join(out),
            finish_reason="length" if len(words) > params.max_tokens else "stop",
            prompt_tokens=len(words),
            completion_tokens=len(out),
        )

    async def _maybe_fail(self) -> None:
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.failures:
            raise self.failures.pop(0)

    async def generate(self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams) -> Generation:
        await self._maybe_fail()
        return self._answer(prompt, params)

    async def stream(
        self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams
    ) -> AsyncIterator[StreamEvent]:
        await self._maybe_fail()
        answer = self._answer(prompt, params)
        for i, word in enumerate(answer.text.split()):
            if self.stream_error_after is not None and i >= self.stream_error_after:
                raise self.stream_error
            yield TextDelta(word if i == 0 else " " + word)
        if self.stream_ends:
            usage = (answer.prompt_tokens, answer.completion_tokens) if self.stream_usage else (0, 0)
            yield StreamEnd(answer.finish_reason, *usage)

    async def embed(self, route: Mapping[str, Any], inputs: list[str]) -> Embeddings:
        await self._maybe_fail()
        vectors = [[float(len(t)), float(len(t.split())), 1.0] for t in inputs]
        return Embeddings(vectors=vectors, prompt_tokens=sum(len(t.split()) for t in inputs), dimensions=3)


#: The route checks of the real runtimes' types (the local one as the fakes use it: any ``name``).
ROUTE_TYPES = BackendCatalog(
    (local_type(), OPENAI, sagemaker_type(), vertex_type(), azureml_type()), "the test harness"
)


@dataclass
class Resolver:
    backends: dict[str, Any]

    def backend_for(self, route: Mapping[str, Any]) -> Any:
        try:
            return self.backends[route["name"]]
        except KeyError:
            raise BackendError("no such fake backend", status=501) from None

    def check_route(self, route: Mapping[str, Any]) -> None:
        ROUTE_TYPES.check_route(route)


GEN = ModelSpec(
    id="fake-gen",
    kind="generation",
    backend={"type": "local", "name": "gen"},
    context_length=4096,
    max_output_tokens=256,
    price_per_1k_prompt_tokens=1.0,
    price_per_1k_completion_tokens=2.0,
    max_retries=2,
    timeout_s=5.0,
)
EMB = ModelSpec(
    id="fake-emb", kind="embedding", backend={"type": "local", "name": "emb"}, context_length=512, max_output_tokens=1
)


@dataclass
class DeferredJobQueue:
    """A JobQueue that only records submissions; ``Harness.run_jobs`` runs them (Harness.call ends its loop)."""

    submitted: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, tenant_id, job_id)

    def submit(self, kind: str, tenant_id: str, job_id: str) -> None:
        self.submitted.append((kind, tenant_id, job_id))


@dataclass
class FakeFineTuner:
    """A scriptable FineTuner: each ``status`` call answers the next of ``script`` (the last one repeats).

    ``check_error``, ``start_error``, ``status_error``, ``cancel_error`` are raised by those calls; every
    call is recorded.
    """

    script: list[TunerStatus] = field(default_factory=list)
    start_error: BaseException | None = None
    check_error: APIError | None = None
    status_error: BaseException | None = None
    cancel_error: BaseException | None = None
    name: str = "fake"
    started: list[tuple[str, str, str | None]] = field(default_factory=list)
    polls: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)

    def check(self, job: FineTuneJob) -> None:
        if self.check_error is not None:
            raise self.check_error

    def start(self, job: FineTuneJob, training_key: str, validation_key: str | None) -> str:
        if self.start_error is not None:
            raise self.start_error
        self.started.append((job.id, training_key, validation_key))
        return f"fake-run-{job.id}"

    def status(self, job: FineTuneJob) -> TunerStatus:
        self.polls.append(job.id)
        if self.status_error is not None:
            raise self.status_error
        if not self.script:
            return TunerStatus("queued")
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def cancel(self, job: FineTuneJob) -> None:
        if self.cancel_error is not None:
            raise self.cancel_error
        self.cancelled.append(job.id)


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]], boundary: str = "b0undary") -> bytes:
    """A ``multipart/form-data`` body as HTTP clients write it (``files``: name -> (filename, content))."""
    out = b""
    for name, value in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    for name, (filename, content) in files.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        out += head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


@dataclass
class Harness:
    """A gateway on an in-memory store with fake backends, a fixed clock and ready-made keys."""

    gateway: Gateway
    store: MemoryStore
    clock: FixedClock
    backend: FakeBackend
    tenant: Tenant
    key: str
    admin_key: str
    resolver: Resolver | None = None
    blobs: MemoryBlobStore = field(default_factory=MemoryBlobStore)
    jobs: DeferredJobQueue = field(default_factory=DeferredJobQueue)

    def call(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
    ) -> Response:
        hdrs = {"authorization": f"Bearer {key or self.key}", **(headers or {})}
        raw = body.encode() if isinstance(body, str) else (body or b"")
        return asyncio.run(self.gateway.handle(Request(method, path, hdrs, query or {}, raw)))

    def call_json(
        self,
        method: str,
        path: str,
        payload: Any = None,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
    ) -> Response:
        """``call`` with a JSON-encoded body (``None`` sends no body)."""
        body = None if payload is None else json.dumps(payload)
        return self.call(method, path, body, key=key, headers=headers, query=query)

    def stream(
        self, path: str, payload: Any, key: str | None = None, read: int | None = None
    ) -> tuple[Response, list[bytes]]:
        """Send a request and read its SSE body in the same event loop.

        ``read`` stops after that many chunks and closes the stream, like a client going away.
        """

        async def go() -> tuple[Response, list[bytes]]:
            hdrs = {"authorization": f"Bearer {key or self.key}"}
            response = await self.gateway.handle(Request("POST", path, hdrs, {}, json.dumps(payload).encode()))
            chunks: list[bytes] = []
            if response.stream is None:
                return response, chunks
            stream = response.stream
            try:
                async for chunk in stream:
                    chunks.append(chunk)
                    if read is not None and len(chunks) >= read:
                        break
            finally:
                closer = getattr(stream, "aclose", None)
                if closer is not None:
                    await closer()
            return response, chunks

        return asyncio.run(go())

    def upload(
        self, content: bytes, purpose: str = "batch", filename: str = "input.jsonl", key: str | None = None
    ) -> Response:
        """``POST /v1/files`` with a multipart body, as the openai SDK sends it."""
        body = multipart({"purpose": purpose}, {"file": (filename, content)})
        headers = {"content-type": "multipart/form-data; boundary=b0undary"}
        return self.call("POST", "/v1/files", body, key=key, headers=headers)

    def run_jobs(self) -> int:
        """Run every submitted job (and those they submit) to its end; returns how many ran."""
        ran = 0
        while self.jobs.submitted:
            kind, tenant_id, job_id = self.jobs.submitted.pop(0)
            asyncio.run(self.gateway.run_job(kind, tenant_id, job_id))
            ran += 1
        return ran

    def add_model(self, spec: ModelSpec, backend: Any | None = None) -> None:
        """Register a model; ``backend`` serves ``spec.backend["name"]``."""
        self.store.put_model(spec)
        if backend is not None:
            assert self.resolver is not None
            self.resolver.backends[spec.backend["name"]] = backend

    def usage(self, tenant_id: str | None = None) -> list[UsageRecord]:
        """Every usage record (of one tenant, if given), oldest first."""
        return self.store.list_usage(tenant_id, 0.0, float("inf"))

    def key_with(self, *scopes: str, tenant: str | None = None) -> str:
        """A new key of the harness's tenant (or ``tenant``) with just ``scopes``: its plaintext."""
        plaintext, record = api_keys.mint(tenant or self.tenant.id, "test", frozenset(scopes), self.clock.now())
        self.store.put_key(record)
        return plaintext

    def new_tenant(
        self, name: str, limits: Limits | None = None, scopes: frozenset[str] | None = None
    ) -> tuple[Tenant, str]:
        tenant = Tenant(id=f"ten_{name}", name=name, created_at=self.clock.now(), limits=limits or Limits())
        self.store.put_tenant(tenant)
        plaintext, record = api_keys.mint(tenant.id, "k", scopes or frozenset({"generate", "embed"}), self.clock.now())
        self.store.put_key(record)
        return tenant, plaintext


def make_harness(
    limits: Limits | None = None,
    settings: GatewaySettings | None = None,
    backend: FakeBackend | None = None,
    token_counter: TokenCounter | None = None,
    fine_tuner: FineTuner | None = None,
) -> Harness:
    clock = FixedClock()
    store = MemoryStore(clock=clock.now)
    backend = backend or FakeBackend()
    store.put_model(GEN)
    store.put_model(EMB)
    resolver = Resolver({"gen": backend, "emb": backend})
    blobs, jobs = MemoryBlobStore(), DeferredJobQueue()
    gateway = Gateway(
        store,
        resolver,
        settings=settings,
        clock=clock,
        token_counter=token_counter,
        blobs=blobs,
        jobs=jobs,
        fine_tuner=fine_tuner,
    )

    async def no_sleep(_: float) -> None:
        return None

    async def clock_sleep(seconds: float) -> None:
        clock.advance(seconds)  # a batch waiting out a rate limit moves the fixed clock instead of waiting

    gateway.model_router._sleep = no_sleep
    gateway.batch_sleep = clock_sleep
    admin = Tenant(id="ten_admin", name="admin", created_at=clock.now())
    store.put_tenant(admin)
    admin_key, admin_record = api_keys.mint(admin.id, "admin", frozenset(ALL_SCOPES), clock.now())
    store.put_key(admin_record)
    tenant = Tenant(id="ten_a", name="a", created_at=clock.now(), limits=limits or Limits())
    store.put_tenant(tenant)
    key, record = api_keys.mint(tenant.id, "k", frozenset({"generate", "embed"}), clock.now())
    store.put_key(record)
    return Harness(gateway, store, clock, backend, tenant, key, admin_key, resolver, blobs, jobs)


def json_of(response: Response) -> Any:
    """The decoded JSON body of a (non-streamed) response."""
    assert response.stream is None, "streamed response"
    return json.loads(response.body)


def error_of(response: Response) -> dict[str, Any]:
    """The ``error`` object of an error response, checked to have OpenAI's four fields."""
    body = json_of(response)
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "code", "param"}, error
    assert isinstance(error["message"], str)
    assert error["message"]
    return error


def training_jsonl(count: int = 10, kind: str = "chat") -> bytes:
    """A fine-tune file of ``count`` examples: chat (``messages``) or ``prompt``/``completion`` lines."""
    rows: list[dict[str, Any]] = [
        {"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]}
        if kind == "chat"
        else {"prompt": f"question {i}", "completion": f"answer {i}"}
        for i in range(count)
    ]
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)
