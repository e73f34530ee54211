"""PowertoolsMetrics: the Metrics port as CloudWatch EMF through Powertools, one blob per dimension set."""

from __future__ import annotations

import threading
from collections import defaultdict

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

# The dimensions core uses; anything else (request ids, key ids, free text) is dropped, because every
# distinct combination of values is a separate, billed CloudWatch metric.
DEFAULT_DIMENSIONS = frozenset({"model", "tenant", "status", "route", "layer", "limit", "code", "metric"})
MAX_VALUE_CHARS = 128
# Powertools prints a blob by itself once a metric holds 100 values; flushing earlier keeps memory flat
# in long invocations (a batch job) and stays under that limit.
MAX_PENDING_VALUES = 1000
DimensionKey = tuple[tuple[str, str], ...]


def unit_for(name: str) -> MetricUnit:
    """The CloudWatch unit a histogram's name implies (``*_seconds``, ``*_ms``, ``*_bytes``)."""
    if name.endswith("_seconds"):
        return MetricUnit.Seconds
    if name.endswith(("_ms", "_milliseconds")):
        return MetricUnit.Milliseconds
    if name.endswith("_bytes"):
        return MetricUnit.Bytes
    return MetricUnit.NoUnit


class PowertoolsMetrics:
    """Counters are summed and histogram values kept per dimension set until ``flush()``.

    Powertools' ``Metrics`` shares one dimension set per flush, so each distinct dimension set gets its
    own ``EphemeralMetrics`` at flush time: one EMF JSON line per set, not one per call. The handler
    calls ``flush()`` at the end of every invocation (and a long job may call it as it goes).
    """

    def __init__(
        self,
        namespace: str = "TextNLP",
        service: str | None = None,
        dimensions: frozenset[str] = DEFAULT_DIMENSIONS,
    ) -> None:
        self._namespace = namespace
        self._service = service
        self._allowed = dimensions
        self._lock = threading.Lock()
        self._counters: dict[DimensionKey, dict[str, float]] = defaultdict(dict)
        self._histograms: dict[DimensionKey, dict[str, list[float]]] = defaultdict(dict)
        self._pending = 0

    def incr(self, name: str, value: float = 1.0, **dims: str) -> None:
        key = self._key(dims)
        with self._lock:
            series = self._counters[key]
            series[name] = series.get(name, 0.0) + value
        self._flush_if_full()

    def observe(self, name: str, value: float, **dims: str) -> None:
        key = self._key(dims)
        with self._lock:
            self._histograms[key].setdefault(name, []).append(value)
            self._pending += 1
        self._flush_if_full()

    def flush(self) -> None:
        """Print the EMF blobs of everything recorded since the last flush (to stdout, for CloudWatch)."""
        with self._lock:
            counters, self._counters = self._counters, defaultdict(dict)
            histograms, self._histograms = self._histograms, defaultdict(dict)
            self._pending = 0
        for key in sorted(set(counters) | set(histograms)):
            emf = EphemeralMetrics(namespace=self._namespace, service=self._service)
            for dim, dim_value in key:
                emf.add_dimension(name=dim, value=dim_value)
            for name, total in counters.get(key, {}).items():
                emf.add_metric(name=name, unit=MetricUnit.Count, value=total)
            for name, values in histograms.get(key, {}).items():
                for sample in values:
                    emf.add_metric(name=name, unit=unit_for(name), value=sample)
            if emf.metric_set:  # Powertools already printed a full blob at each 100th value of a metric
                emf.flush_metrics()

    def _key(self, dims: dict[str, str]) -> DimensionKey:
        kept = ((name, str(value)[:MAX_VALUE_CHARS]) for name, value in dims.items() if name in self._allowed)
        return tuple(sorted((name, value) for name, value in kept if value))

    def _flush_if_full(self) -> None:
        if self._pending >= MAX_PENDING_VALUES:
            self.flush()
