"""AppInsightsLogMetrics: the lines Application Insights receives, in the shape a log query sums (what the
Metrics contract does not cover; it runs there too)."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from typing import Any

import pytest

from adapters.azure.metrics import AppInsightsLogMetrics
from core import metric_lines

pytestmark = pytest.mark.azure


def entries(stream: io.StringIO) -> list[dict[str, Any]]:
    text = stream.getvalue()
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_one_line_per_counter_and_dimension_set_and_one_per_observed_value() -> None:
    out = io.StringIO()
    metrics = AppInsightsLogMetrics(service="api", stream=out)
    metrics.incr("tokens_generated_total", 12, model="smol", tenant="t1")
    metrics.incr("tokens_generated_total", 30, tenant="t1", model="smol")
    metrics.observe("backend_latency_seconds", 0.25, model="smol")
    assert out.getvalue() == ""  # nothing is written before the flush
    metrics.flush()
    assert entries(out) == [
        {
            "metric": "backend_latency_seconds",
            "kind": "histogram",
            "value": 0.25,
            "unit": "s",
            "dimensions": {"model": "smol"},
            "service": "api",
        },
        {
            "metric": "tokens_generated_total",
            "kind": "counter",
            "value": 42,
            "unit": "1",
            "dimensions": {"model": "smol", "tenant": "t1"},
            "service": "api",
        },
    ]
    metrics.flush()  # what was flushed is not written again
    assert len(entries(out)) == 2


def test_without_a_stream_each_line_is_an_info_record_of_the_metrics_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The Functions Python worker forwards log records to Application Insights' ``traces``."""
    metrics = AppInsightsLogMetrics()
    metrics.incr("requests_total", status="200")
    metrics.observe("upload_ms", 3.5)
    with caplog.at_level(logging.INFO, logger="textnlp.metrics"):
        metrics.flush()
    records = [r for r in caplog.records if r.name == "textnlp.metrics"]
    assert [r.levelno for r in records] == [logging.INFO, logging.INFO]
    got = [json.loads(r.getMessage()) for r in records]
    assert [(e["metric"], e["value"], e["unit"], e["dimensions"]) for e in got] == [
        ("upload_ms", 3.5, "ms", {}),
        ("requests_total", 1, "1", {"status": "200"}),
    ]


def test_only_bounded_dimensions_are_kept_and_odd_values_are_dropped_or_escaped() -> None:
    out = io.StringIO()
    metrics = AppInsightsLogMetrics(stream=out)
    metrics.incr("backend_errors_total", model="m" * 500, status="502", request_id="req_1", key_id="k1", tenant="")
    metrics.observe("request_latency_seconds", float("nan"))
    metrics.incr("requests_total", float("inf"))
    metrics.incr("requests_total", 1, model='line\nbreak " \\ é')
    metrics.observe("payload_bytes", 1e300)
    metrics.flush()
    got = entries(out)  # strict JSON (no NaN), one entry per line
    assert [(e["metric"], e["dimensions"]) for e in got] == [
        ("payload_bytes", {}),
        ("requests_total", {"model": 'line\nbreak " \\ é'}),
        ("backend_errors_total", {"model": "m" * 128, "status": "502"}),
    ]
    assert got[0]["unit"] == "By"
    assert "service" not in got[0]


def test_a_full_buffer_flushes_by_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metric_lines, "MAX_PENDING_VALUES", 10)  # the buffering is core.metric_lines
    out = io.StringIO()
    metrics = AppInsightsLogMetrics(stream=out)
    for _ in range(9):
        metrics.observe("request_latency_seconds", 0.1)
    assert out.getvalue() == ""
    metrics.observe("request_latency_seconds", 0.1)
    assert len(entries(out)) == 10


def test_importing_the_adapter_loads_no_exporter_or_sdk() -> None:
    heavy = ("azure", "opentelemetry", "requests", "urllib3")
    code = f"import sys, adapters.azure.metrics; print([m for m in sys.modules if m.startswith({heavy!r})])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
