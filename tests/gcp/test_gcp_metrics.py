"""CloudLoggingMetrics: the lines Cloud Logging receives, in the shape log-based metrics extract (what the
Metrics contract does not cover; it runs there too)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from adapters.gcp.metrics import CloudLoggingMetrics
from core import metric_lines

pytestmark = pytest.mark.gcp


def entries(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_one_line_per_counter_and_dimension_set_and_one_per_observed_value() -> None:
    out = io.StringIO()
    metrics = CloudLoggingMetrics(service="api", stream=out)
    metrics.incr("tokens_generated_total", 12, model="smol", tenant="t1")
    metrics.incr("tokens_generated_total", 30, tenant="t1", model="smol")
    metrics.observe("backend_latency_seconds", 0.25, model="smol")
    metrics.observe("backend_latency_seconds", 0.5, model="smol")
    assert out.getvalue() == ""  # nothing is written before the flush
    metrics.flush()
    assert entries(out) == [
        {
            "severity": "INFO",
            "message": "metric backend_latency_seconds",
            "metric": "backend_latency_seconds",
            "kind": "histogram",
            "value": 0.25,
            "unit": "s",
            "labels": {"model": "smol"},
            "service": "api",
        },
        {
            "severity": "INFO",
            "message": "metric backend_latency_seconds",
            "metric": "backend_latency_seconds",
            "kind": "histogram",
            "value": 0.5,
            "unit": "s",
            "labels": {"model": "smol"},
            "service": "api",
        },
        {
            "severity": "INFO",
            "message": "metric tokens_generated_total",
            "metric": "tokens_generated_total",
            "kind": "counter",
            "value": 42,
            "unit": "1",
            "labels": {"model": "smol", "tenant": "t1"},
            "service": "api",
        },
    ]
    metrics.flush()  # what was flushed is not written again
    assert len(entries(out)) == 3


def test_only_bounded_dimensions_become_labels() -> None:
    """Every distinct label value is a billed time series: request ids, key ids and empty values are dropped,
    long values cut to 128 characters."""
    out = io.StringIO()
    metrics = CloudLoggingMetrics(stream=out)
    metrics.incr("backend_errors_total", model="m" * 500, status="502", request_id="req_1", key_id="k1", tenant="")
    metrics.flush()
    (entry,) = entries(out)
    assert entry["labels"] == {"model": "m" * 128, "status": "502"}
    assert "service" not in entry


def test_values_json_cannot_carry_are_dropped_and_odd_text_stays_on_one_line() -> None:
    out = io.StringIO()
    metrics = CloudLoggingMetrics(stream=out)
    metrics.observe("request_latency_seconds", float("nan"))
    metrics.incr("requests_total", float("inf"))
    metrics.incr("requests_total", 1, model='line\nbreak " \\ é \u2028')
    metrics.observe("upload_ms", 3.5)
    metrics.observe("payload_bytes", 1e300)
    metrics.flush()
    got = entries(out)  # each line strict JSON (no NaN), one entry per line
    assert [(e["metric"], e["value"], e["unit"]) for e in got] == [
        ("payload_bytes", 1e300, "By"),
        ("upload_ms", 3.5, "ms"),
        ("requests_total", 1, "1"),
    ]
    assert got[2]["labels"] == {"model": 'line\nbreak " \\ é \u2028'}


def test_a_full_buffer_flushes_by_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metric_lines, "MAX_PENDING_VALUES", 10)  # the buffering is core.metric_lines
    out = io.StringIO()
    metrics = CloudLoggingMetrics(stream=out)
    for _ in range(9):
        metrics.observe("request_latency_seconds", 0.1)
    assert out.getvalue() == ""
    metrics.observe("request_latency_seconds", 0.1)
    assert len(entries(out)) == 10


def test_stdout_is_looked_up_at_each_flush(capsys: pytest.CaptureFixture[str]) -> None:
    """Cloud Run reads stdout; a metrics object made before a runtime swaps stdout still writes to it."""
    metrics = CloudLoggingMetrics()
    metrics.incr("requests_total", status="200")
    metrics.flush()
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["labels"] == {"status": "200"}
