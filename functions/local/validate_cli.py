"""``textnlp validate CANDIDATES.jsonl``: the /v1/validate metrics in-process, to a JSON report and a table."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import APIError
from core.schemas.validate import ValidateResponse
from core.validation.fluency import fluency
from core.validation.report import METRICS, Inputs, evaluate, select_metrics
from core.validation.result import MetricResult
from core.validation.semantic import embedding_similarity


class InputError(ValueError):
    """A malformed input file: the message names the file and line."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textnlp validate",
        description="Score generated text against references and on its own; writes a JSON report.",
    )
    parser.add_argument("candidates", type=Path, help='JSONL: strings, or objects with "text"/"candidate"')
    parser.add_argument("--references", type=Path, help="JSONL aligned with the candidates: strings or lists")
    parser.add_argument("--training", type=Path, help="JSONL corpus for memorisation (default: the references)")
    parser.add_argument("--metrics", help=f"comma-separated, from: {', '.join(METRICS)}")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument("--ngram", type=int, default=8, help="memorisation window in words (default 8)")
    parser.add_argument("--threshold", type=float, default=0.8, help="near-duplicate Jaccard threshold (default 0.8)")
    return parser


def _lines(path: Path) -> list[tuple[int, Any]]:
    out = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                out.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{number}: not JSON ({exc.msg})") from None
    return out


def _text(value: Any, keys: Sequence[str], where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for key in keys:
            if isinstance(value.get(key), str):
                return str(value[key])
    raise InputError(f"{where}: expected a string or an object with {' or '.join(map(repr, keys))}")


def _refs(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise InputError(f"{where}: a reference must be a string or a non-empty list of strings")


def _reference_of(value: Any) -> Any:
    if isinstance(value, dict):
        for key in ("reference", "references", "text"):
            if key in value:
                return value[key]
    return value


def load_inputs(args: argparse.Namespace) -> Inputs:
    rows = _lines(args.candidates)
    if not rows:
        raise InputError(f"{args.candidates}: no candidates")
    candidates = [_text(v, ("text", "candidate"), f"{args.candidates}:{n}") for n, v in rows]
    inline = [(n, v.get("reference", v.get("references"))) for n, v in rows if isinstance(v, dict)]
    references: list[list[str]] | None = None
    if args.references is not None:
        ref_rows = _lines(args.references)
        if len(ref_rows) != len(candidates):
            raise InputError(f"{args.references}: {len(ref_rows)} references for {len(candidates)} candidates")
        references = [_refs(_reference_of(v), f"{args.references}:{n}") for n, v in ref_rows]
    elif any(r is not None for _, r in inline):
        if len(inline) != len(rows) or any(r is None for _, r in inline):
            raise InputError(f"{args.candidates}: some candidates have a reference and others do not")
        references = [_refs(r, f"{args.candidates}:{n}") for n, r in inline]
    training = None
    if args.training is not None:
        training = [_text(v, ("text",), f"{args.training}:{n}") for n, v in _lines(args.training)]
    return Inputs(candidates, references, training, args.ngram, args.threshold)


def _embedding(inputs: Inputs) -> MetricResult:
    from adapters.local.onnx_embeddings import OnnxMiniLMBackend

    refs = inputs.refs()
    texts = list(dict.fromkeys([*inputs.candidates, *(r for group in refs for r in group)]))
    vectors = dict(zip(texts, OnnxMiniLMBackend().embed_sync(texts).vectors, strict=True))
    return embedding_similarity([vectors[c] for c in inputs.candidates], [[vectors[r] for r in g] for g in refs])


def _fluency(inputs: Inputs) -> MetricResult:
    from adapters.local.llama_backend import LlamaCppBackend

    backend = LlamaCppBackend()

    async def score() -> list[list[float]]:
        return [await backend.token_logprobs({"type": "local"}, text) for text in inputs.candidates]

    try:
        return fluency(asyncio.run(score()))
    finally:
        backend.close()


def _figure(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(response: ValidateResponse) -> str:
    """A readable summary: one line per metric (headline figure and the item range), then the flags."""
    lines = [f"{'metric':<22}{'corpus':>12}{'item min':>12}{'item mean':>12}{'item max':>12}"]
    for name, scores in response.metrics.items():
        numbers = [v for v in scores.items if isinstance(v, int | float) and not isinstance(v, bool)]
        row = [
            _figure(response.summary.scores.get(name)),
            *(
                (_figure(min(numbers)), _figure(sum(numbers) / len(numbers)), _figure(max(numbers)))
                if numbers
                else ("-", "-", "-")
            ),
        ]
        lines.append(f"{name:<22}" + "".join(f"{c:>12}" for c in row))
    lines.append("flags:" if response.summary.flags else "no flags")
    lines += [f"  - {flag}" for flag in response.summary.flags]
    return "\n".join(lines)


def run(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    try:
        inputs = load_inputs(args)
        requested = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
        names = select_metrics(
            requested,
            has_references=inputs.references is not None,
            has_training=inputs.training is not None,
            has_fluency_model="fluency" in (requested or ()),
        )
        computed: dict[str, MetricResult] = {}
        if "embedding_similarity" in names:
            computed["embedding_similarity"] = _embedding(inputs)
        if "fluency" in names:
            computed["fluency"] = _fluency(inputs)
        report = evaluate(names, inputs, computed)
    except ImportError as exc:
        print(f"textnlp validate: {exc.name} is not installed (pip install 'textnlp[local]')", file=sys.stderr)
        return 2
    except (OSError, ValueError, APIError) as exc:  # InputError and MetricSelectionError are ValueErrors
        message = exc.message if isinstance(exc, APIError) else str(exc)
        print(f"textnlp validate: {message}", file=sys.stderr)
        return 2
    response = ValidateResponse.from_report(report, inputs)
    if args.out is not None:
        args.out.write_text(response.model_dump_json(indent=2) + "\n", encoding="utf-8")
    print(table(response))
    if args.out is not None:
        print(f"report written to {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(run(sys.argv[1:]))
