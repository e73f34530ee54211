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

import sys
from typing import TextIO

from core.metric_lines import DEFAULT_DIMENSIONS, MetricLines, unit_for

__all__ = ["CloudLoggingMetrics", "unit_for"]


class CloudLoggingMetrics(MetricLines):
    """Lines to ``stream`` (stdout by default, looked up at each flush) in one write (``core.metric_lines``)."""

    def __init__(
        self,
        service: str | None = None,
        dimensions: frozenset[str] = DEFAULT_DIMENSIONS,
        stream: TextIO | None = None,
    ) -> None:
        super().__init__(dimensions)
        self._service = service
        self._stream = stream

    def _entry(self, name: str, kind: str, value: float, dims: dict[str, str]) -> dict[str, object]:
        entry: dict[str, object] = {"severity": "INFO", "message": f"metric {name}"}
        entry |= super()._entry(name, kind, value, dims)
        entry["labels"] = dims
        if self._service:
            entry["service"] = self._service
        return entry

    def _write(self, lines: list[str]) -> None:
        stream = self._stream or sys.stdout
        stream.write("\n".join(lines) + "\n")
        stream.flush()
