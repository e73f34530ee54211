"""PowertoolsMetrics: the EMF JSON printed on flush names the metrics, units and dimensions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from adapters.aws.metrics import MAX_PENDING_VALUES, PowertoolsMetrics, unit_for
from core.ports import Metrics

pytestmark = pytest.mark.aws


def blobs(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def definitions(blob: dict[str, Any]) -> tuple[str, list[list[str]], dict[str, str]]:
    directive = blob["_aws"]["CloudWatchMetrics"][0]
    units = {metric["Name"]: metric["Unit"] for metric in directive["Metrics"]}
    return directive["Namespace"], directive["Dimensions"], units


def test_one_blob_per_dimension_set_with_summed_counters(capsys: pytest.CaptureFixture[str]) -> None:
    metrics: Metrics = PowertoolsMetrics(namespace="TextNLP", service="api")
    metrics.incr("tokens_generated_total", 12, model="smol", tenant="t1")
    metrics.incr("tokens_generated_total", 30, tenant="t1", model="smol")  # same set, any order
    metrics.incr("prompt_tokens_total", 5, model="smol", tenant="t1")
    metrics.incr("requests_total", route="/v1/completions", status="200")
    metrics.observe("request_latency_seconds", 0.25, route="/v1/completions")
    metrics.observe("request_latency_seconds", 0.5, route="/v1/completions")
    assert blobs(capsys) == []  # nothing printed before the flush
    assert isinstance(metrics, PowertoolsMetrics)
    metrics.flush()
    printed = blobs(capsys)
    assert len(printed) == 3
    by_metric = {name: blob for blob in printed for name in definitions(blob)[2]}

    tokens = by_metric["tokens_generated_total"]
    namespace, dimensions, units = definitions(tokens)
    assert namespace == "TextNLP"
    assert sorted(dimensions[0]) == ["model", "service", "tenant"]
    assert (tokens["model"], tokens["tenant"], tokens["service"]) == ("smol", "t1", "api")
    assert tokens["tokens_generated_total"] == [42.0]
    assert tokens["prompt_tokens_total"] == [5.0]
    assert units == {"tokens_generated_total": "Count", "prompt_tokens_total": "Count"}

    requests = by_metric["requests_total"]
    assert (requests["route"], requests["status"], requests["requests_total"]) == ("/v1/completions", "200", [1.0])

    latency = by_metric["request_latency_seconds"]
    assert latency["request_latency_seconds"] == [0.25, 0.5]
    assert definitions(latency)[2] == {"request_latency_seconds": "Seconds"}
    assert "status" not in latency

    metrics.flush()
    assert blobs(capsys) == []  # flushed data is gone; an empty flush prints nothing


def test_unknown_and_empty_dimensions_are_dropped(capsys: pytest.CaptureFixture[str]) -> None:
    metrics = PowertoolsMetrics()
    metrics.incr("backend_errors_total", model="m" * 500, status="502", request_id="req-123", tenant="")
    metrics.flush()
    (blob,) = blobs(capsys)
    _, dimensions, _ = definitions(blob)
    assert sorted(dimensions[0]) == ["model", "status"]
    assert "request_id" not in blob
    assert len(blob["model"]) == 128


def test_units_follow_the_histogram_name() -> None:
    assert unit_for("backend_latency_seconds").value == "Seconds"
    assert unit_for("render_ms").value == "Milliseconds"
    assert unit_for("body_bytes").value == "Bytes"
    assert unit_for("validation_score").value == "None"


def test_many_values_flush_by_themselves(capsys: pytest.CaptureFixture[str]) -> None:
    metrics = PowertoolsMetrics()
    for _ in range(MAX_PENDING_VALUES):
        metrics.observe("backend_latency_seconds", 0.01, model="m")
    printed = blobs(capsys)
    assert sum(len(blob["backend_latency_seconds"]) for blob in printed) == MAX_PENDING_VALUES
    assert all(len(blob["backend_latency_seconds"]) <= 100 for blob in printed)  # EMF's limit per metric
