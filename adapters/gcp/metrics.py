"""CloudLoggingMetrics: the Metrics port as structured Cloud Logging JSON lines that log-based metrics read.

No exporter and no network call: Cloud Run functions send each stdout line to Cloud Logging, which parses a
JSON object into ``jsonPayload`` (``severity`` and ``message`` become the entry's own fields). One line per
counter per dimension set (the sum since the last flush) and one line per observed value:

    {"severity": "INFO", "message": "metric tokens_generated_total", "metric": "tokens_generated_total",
     "kind": "counter", "value": 42, "unit": "1", "labels": {"model": "smol", "tenant": "t1"}}

A log-based metric selects its lines with ``jsonPayload.metric="<name>"``, takes ``value`` with
``EXTRACT(jsonPayload.value)`` (a DISTRIBUTION metric: its sum is the counter, its percentiles a
histogram's) and each label with ``EXTRACT(jsonPayload.labels.<dimension>)``.
"""

from __future__ import annotations

import json
import math
import sys
import threading
from collections import defaultdict
from typing import TextIO

# The dimensions core uses; anything else (request ids, key ids, free text) is dropped: every distinct value
# of a log-based metric's label is a time series of its own, and a metric takes at most 10 labels.
DEFAULT_DIMENSIONS = frozenset({"model", "tenant", "status", "route", "layer", "limit", "code", "metric"})
MAX_VALUE_CHARS = 128
MAX_PENDING_VALUES = 1000  # flush by itself past this many held values: memory stays flat in a long job
DimensionKey = tuple[tuple[str, str], ...]


def unit_for(name: str) -> str:
    """The Cloud Monitoring unit a metric's name implies (``*_seconds``, ``*_ms``, ``*_bytes``; else ``1``)."""
    if name.endswith("_seconds"):
        return "s"
    if name.endswith(("_ms", "_milliseconds")):
        return "ms"
    if name.endswith("_bytes"):
        return "By"
    return "1"


class CloudLoggingMetrics:
    """Counters are summed and observed values kept per dimension set until ``flush()``, which writes the
    lines to ``stream`` (stdout by default, looked up at each flush) in one write.

    The function calls ``flush()`` when a request (or a batch event) is done; a long job may call it as it
    goes, and past ``MAX_PENDING_VALUES`` held values it flushes by itself. ``incr``/``observe`` never raise.
    """

    def __init__(
        self,
        service: str | None = None,
        dimensions: frozenset[str] = DEFAULT_DIMENSIONS,
        stream: TextIO | None = None,
    ) -> None:
        self._service = service
        self._allowed = dimensions
        self._stream = stream
        self._lock = threading.Lock()
        self._counters: dict[DimensionKey, dict[str, float]] = defaultdict(dict)
        self._observed: dict[DimensionKey, dict[str, list[float]]] = defaultdict(dict)
        self._pending = 0

    def incr(self, name: str, value: float = 1.0, **dims: str) -> None:
        if not _finite(value):
            return
        key = self._key(dims)
        with self._lock:
            series = self._counters[key]
            if name not in series:
                self._pending += 1
            series[name] = series.get(name, 0.0) + float(value)
        self._flush_if_full()

    def observe(self, name: str, value: float, **dims: str) -> None:
        if not _finite(value):
            return
        key = self._key(dims)
        with self._lock:
            self._observed[key].setdefault(name, []).append(float(value))
            self._pending += 1
        self._flush_if_full()

    def flush(self) -> None:
        """Write the lines of everything recorded since the last flush."""
        with self._lock:
            counters, self._counters = self._counters, defaultdict(dict)
            observed, self._observed = self._observed, defaultdict(dict)
            self._pending = 0
        lines: list[str] = []
        for key in sorted(set(counters) | set(observed)):
            labels = dict(key)
            for name, total in sorted(counters.get(key, {}).items()):
                lines.append(self._line(name, "counter", total, labels))
            for name, values in sorted(observed.get(key, {}).items()):
                lines.extend(self._line(name, "histogram", value, labels) for value in values)
        if lines:
            stream = self._stream or sys.stdout
            stream.write("\n".join(lines) + "\n")
            stream.flush()

    def _line(self, name: str, kind: str, value: float, labels: dict[str, str]) -> str:
        entry: dict[str, object] = {
            "severity": "INFO",
            "message": f"metric {name}",
            "metric": name,
            "kind": kind,
            "value": int(value) if value.is_integer() and abs(value) < 2**53 else value,
            "unit": "1" if kind == "counter" else unit_for(name),
            "labels": labels,
        }
        if self._service:
            entry["service"] = self._service
        return json.dumps(entry, separators=(",", ":"))

    def _key(self, dims: dict[str, str]) -> DimensionKey:
        kept = ((name, str(value)[:MAX_VALUE_CHARS]) for name, value in dims.items() if name in self._allowed)
        return tuple(sorted((name, value) for name, value in kept if value))

    def _flush_if_full(self) -> None:
        if self._pending >= MAX_PENDING_VALUES:
            self.flush()


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except TypeError:
        return False
