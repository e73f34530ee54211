"""Metrics contract: ``incr`` and ``observe`` take any dimensions and never raise (a metric must never fail a
request); counters add up per dimension set, whatever the order of the dimensions, also from many threads;
observed values are all kept. Where an adapter can be read back (Prometheus' text, Powertools' EMF lines),
the values must be there; a sink that keeps nothing (``NullMetrics``) is held to the first half.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from core.ports import Metrics

Dims = dict[str, str]


@dataclass
class Readback:
    """What was recorded: counter totals and observed values, per metric name and dimension set."""

    counters: dict[tuple[str, frozenset[tuple[str, str]]], float]
    observed: dict[tuple[str, frozenset[tuple[str, str]]], tuple[int, float]]  # count, sum

    def counter(self, name: str, **dims: str) -> float:
        return self.counters.get((name, frozenset(dims.items())), 0.0)

    def histogram(self, name: str, **dims: str) -> tuple[int, float]:
        return self.observed.get((name, frozenset(dims.items())), (0, 0.0))


@dataclass
class Subject:
    metrics: Metrics
    read: Callable[[], Readback] | None  # None: the adapter keeps nothing to read


@contextmanager
def _null(capsys: pytest.CaptureFixture[str]) -> Iterator[Subject]:
    from core.observability import NullMetrics

    yield Subject(NullMetrics(), None)


_SAMPLE = re.compile(r"^textnlp_(\w+?)(_count|_sum|_bucket)?(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _unescape(value: str) -> str:
    return value.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")


@contextmanager
def _prometheus(capsys: pytest.CaptureFixture[str]) -> Iterator[Subject]:
    from adapters.local.prometheus import PrometheusMetrics

    metrics = PrometheusMetrics()

    def read() -> Readback:
        """Parse the text exposition ``GET /metrics`` serves."""
        counters: dict[Any, float] = {}
        parts: dict[Any, dict[str, float]] = {}
        types = dict(re.findall(r"^# TYPE textnlp_(\w+) (\w+)$", metrics.render(), re.M))
        for line in metrics.render().splitlines():
            match = _SAMPLE.match(line)
            if match is None:
                continue
            name, suffix, labels, value = match.groups()
            key_labels = frozenset((k, _unescape(v)) for k, v in _LABEL.findall(labels or ""))
            if types.get(name) == "counter" and suffix is None:
                counters[(name, key_labels)] = float(value)
            elif suffix in ("_count", "_sum") and types.get(name) == "histogram":
                parts.setdefault((name, key_labels), {})[suffix] = float(value)
        observed = {key: (int(p["_count"]), p["_sum"]) for key, p in parts.items()}
        return Readback(counters, observed)

    yield Subject(metrics, read)


@contextmanager
def _powertools(capsys: pytest.CaptureFixture[str]) -> Iterator[Subject]:
    from adapters.aws.metrics import PowertoolsMetrics

    metrics = PowertoolsMetrics(namespace="TextNLP")
    # Everything printed while the subject lives: a full buffer flushes by itself, from whichever thread.
    printed: list[str] = []

    def read() -> Readback:
        """Flush, and sum the EMF lines printed so far (what CloudWatch would ingest)."""
        metrics.flush()
        printed.extend(capsys.readouterr().out.splitlines())
        counters: dict[Any, float] = {}
        observed: dict[Any, tuple[int, float]] = {}
        for line in printed:
            blob = json.loads(line)
            directive = blob["_aws"]["CloudWatchMetrics"][0]
            dims = frozenset((d, blob[d]) for d in directive["Dimensions"][0] if d != "service")
            for metric in directive["Metrics"]:
                values = blob[metric["Name"]]
                values = values if isinstance(values, list) else [values]
                key = (metric["Name"], dims)
                if metric["Unit"] == "Count":
                    counters[key] = counters.get(key, 0.0) + sum(values)
                else:
                    count, total = observed.get(key, (0, 0.0))
                    observed[key] = (count + len(values), total + sum(values))
        return Readback(counters, observed)

    yield Subject(metrics, read)


@contextmanager
def _cloud_logging(capsys: pytest.CaptureFixture[str]) -> Iterator[Subject]:
    from adapters.gcp.metrics import CloudLoggingMetrics

    metrics = CloudLoggingMetrics(service="api")
    printed: list[str] = []

    def read() -> Readback:
        """Flush, and read the lines back as log-based metrics would: ``jsonPayload.value`` by metric and labels."""
        metrics.flush()
        printed.extend(capsys.readouterr().out.splitlines())
        counters: dict[Any, float] = {}
        observed: dict[Any, tuple[int, float]] = {}
        for line in printed:
            entry = json.loads(line)
            assert entry["severity"] == "INFO"
            assert entry["message"] == f"metric {entry['metric']}"
            key = (entry["metric"], frozenset(entry["labels"].items()))
            if entry["kind"] == "counter":
                counters[key] = counters.get(key, 0.0) + entry["value"]
            else:
                count, total = observed.get(key, (0, 0.0))
                observed[key] = (count + 1, total + entry["value"])
        return Readback(counters, observed)

    yield Subject(metrics, read)


@contextmanager
def _app_insights(capsys: pytest.CaptureFixture[str]) -> Iterator[Subject]:
    import io

    from adapters.azure.metrics import AppInsightsLogMetrics

    out = io.StringIO()  # the lines the Functions worker would send to Application Insights' traces
    metrics = AppInsightsLogMetrics(service="api", stream=out)

    def read() -> Readback:
        """Flush, and sum the lines as a log query would: ``value`` by ``metric`` and ``dimensions``."""
        metrics.flush()
        counters: dict[Any, float] = {}
        observed: dict[Any, tuple[int, float]] = {}
        for line in out.getvalue().splitlines():
            entry = json.loads(line)
            key = (entry["metric"], frozenset(entry["dimensions"].items()))
            if entry["kind"] == "counter":
                counters[key] = counters.get(key, 0.0) + entry["value"]
            else:
                count, total = observed.get(key, (0, 0.0))
                observed[key] = (count + 1, total + entry["value"])
        return Readback(counters, observed)

    yield Subject(metrics, read)


#: Every Metrics adapter: add one entry and the suite runs on it.
ADAPTERS: list[Any] = [
    pytest.param(_null, id="null"),
    pytest.param(_prometheus, id="prometheus"),
    pytest.param(_powertools, id="powertools", marks=pytest.mark.aws),
    pytest.param(_cloud_logging, id="cloud-logging", marks=pytest.mark.gcp),
    pytest.param(_app_insights, id="app-insights", marks=pytest.mark.azure),
]


@pytest.fixture(params=ADAPTERS)
def subject(request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]) -> Iterator[Subject]:
    """``capsys``: for adapters that print what they record (EMF goes to stdout, for CloudWatch)."""
    factory: Callable[[pytest.CaptureFixture[str]], AbstractContextManager[Subject]] = request.param
    with factory(capsys) as made:
        yield made


def _read(subject: Subject) -> Readback:
    if subject.read is None:
        pytest.skip("this adapter keeps nothing to read back")
    return subject.read()


# Dimensions core passes (core/model_router.py, core/metering.py, ...): a counter's ``status`` is a string.
MODEL = {"model": "smol", "tenant": "t1"}


def test_incr_and_observe_accept_any_dimensions_and_never_raise(subject: Subject) -> None:
    m = subject.metrics
    m.incr("requests_total")
    m.incr("requests_total", 2.5, route="/v1/completions", status="200")
    m.incr("backend_errors_total", model="m" * 500, status="502", request_id="req_1", tenant="")
    m.incr("odd_total", model='quote " backslash \\ newline \n é ✓')
    m.incr("zero_total", 0.0, model="smol")
    m.observe("backend_latency_seconds", 0.0, model="smol")
    m.observe("backend_latency_seconds", 1e9, model="smol")
    m.observe("request_latency_seconds", 0.25)
    m.observe("validation_score", -1.5, metric="bleu")
    if subject.read is not None:
        subject.read()  # rendering / flushing what was recorded does not raise either


def test_counters_add_up_per_dimension_set(subject: Subject) -> None:
    m = subject.metrics
    m.incr("tokens_generated_total", 12, model="smol", tenant="t1")
    m.incr("tokens_generated_total", 30, tenant="t1", model="smol")  # same set, any order
    m.incr("tokens_generated_total", 5, model="other", tenant="t1")
    m.incr("requests_total", status="200")
    m.incr("requests_total", status="200")
    got = _read(subject)
    assert got.counter("tokens_generated_total", **MODEL) == 42
    assert got.counter("tokens_generated_total", model="other", tenant="t1") == 5
    assert got.counter("requests_total", status="200") == 2


def test_observed_values_are_all_kept(subject: Subject) -> None:
    m = subject.metrics
    for value in (0.25, 0.5, 2.0):
        m.observe("backend_latency_seconds", value, model="smol")
    m.observe("backend_latency_seconds", 7.0, model="other")
    got = _read(subject)
    assert got.histogram("backend_latency_seconds", model="smol") == (3, 2.75)
    assert got.histogram("backend_latency_seconds", model="other") == (1, 7.0)


def test_concurrent_increments_lose_nothing(subject: Subject) -> None:
    def work() -> None:
        for _ in range(500):
            subject.metrics.incr("requests_total", status="200")
            subject.metrics.observe("request_latency_seconds", 0.5, status="200")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    got = _read(subject)
    assert got.counter("requests_total", status="200") == 4000
    assert got.histogram("request_latency_seconds", status="200") == (4000, 2000.0)
