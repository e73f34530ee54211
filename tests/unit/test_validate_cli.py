"""``textnlp validate``: JSONL in, the same report as /v1/validate out (file and table)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sacrebleu

from core.validation.report import DEFAULT_METRICS
from functions.local.validate_cli import run


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_inline_references_report_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [
        {"text": "the cat sat on the mat", "reference": "the cat is on the mat"},
        {"candidate": "call me on +44 20 7946 0958", "reference": ["ring me", "phone me"]},
    ]
    out = tmp_path / "report.json"
    assert run([str(write_jsonl(tmp_path / "c.jsonl", rows)), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["metrics"]) == [*DEFAULT_METRICS, "bleu", "chrf", "rougeL"]
    expected = sacrebleu.corpus_bleu(
        ["the cat sat on the mat", "call me on +44 20 7946 0958"],
        [["the cat is on the mat", "ring me"], [None, "phone me"]],  # type: ignore[list-item]
    ).score
    assert report["metrics"]["bleu"]["corpus"] == pytest.approx(expected)
    assert report["pii"][1] == [{"kind": "phone", "start": 11, "end": 27, "masked": "+** ** **** **58"}]
    assert "7946" not in out.read_text()
    table = capsys.readouterr().out
    assert "bleu" in table
    assert "pii: 1 of 2 candidates contain personal data" in table
    assert f"report written to {out}" in table


def test_references_file_metrics_and_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    candidates = write_jsonl(tmp_path / "c.jsonl", ["one two three four five six seven eight nine", "ten"])
    references = write_jsonl(tmp_path / "r.jsonl", [["one two"], {"reference": "ten eleven"}])
    training = write_jsonl(tmp_path / "t.jsonl", [{"text": "zero one two three four five six seven eight"}])
    metrics = ["--metrics", "chrf,memorisation"]
    assert run([str(candidates), "--references", str(references), "--training", str(training), *metrics]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["metric", "corpus", "item", "min", "item", "mean", "item", "max"]
    assert [line.split()[0] for line in table[1:3]] == ["chrf", "memorisation"]
    assert "memorisation: 1 of 2 candidates copy 8+ word spans (longest 8 words)" in "\n".join(table)


@pytest.mark.parametrize(
    ("rows", "extra", "message"),
    [
        (["a"], ["--metrics", "bleu,vibes"], "unknown metric(s) 'vibes'; known metrics: bleu, chrf"),
        (["a"], ["--metrics", "bleu"], "bleu compare with references"),
        ([{"text": "a", "reference": "b"}, {"text": "c"}], [], "some candidates have a reference and others do not"),
        ([{"body": "a"}], [], "expected a string or an object with 'text' or 'candidate'"),
        ([], [], "no candidates"),
    ],
)
def test_refusals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rows: list[Any], extra: list[str], message: str
) -> None:
    assert run([str(write_jsonl(tmp_path / "c.jsonl", rows)), *extra]) == 2
    assert message in capsys.readouterr().err


def test_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('"fine"\n{not json\n', encoding="utf-8")
    assert run([str(bad)]) == 2
    assert f"{bad}:2: not JSON" in capsys.readouterr().err
    good = write_jsonl(tmp_path / "c.jsonl", ["a", "b"])
    short = write_jsonl(tmp_path / "r.jsonl", ["a"])
    assert run([str(good), "--references", str(short)]) == 2
    assert "1 references for 2 candidates" in capsys.readouterr().err
    assert run([str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err


def test_textnlp_validate_is_wired_into_the_main_command(tmp_path, capsys) -> None:
    from functions.local.cli import main

    candidates = tmp_path / "c.jsonl"
    candidates.write_text('"the cat sat on the mat"\n"a dog ran in the park"\n')
    out = tmp_path / "report.json"
    assert main(["validate", str(candidates), "--metrics", "distinct_1,length", "--out", str(out)]) == 0
    assert out.exists()
    assert "distinct_1" in capsys.readouterr().out
