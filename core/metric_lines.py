"""``MetricLines``: the Metrics port as JSON lines a cloud's log pipeline turns into metrics.

What Google Cloud (log-based metrics) and Azure (log queries, data collection rules) have alike: counters
summed and observed values kept per dimension set until ``flush()`` (the function calls it when a request or
an event is done; past ``MAX_PENDING_VALUES`` held values it flushes by itself), one line per counter per
dimension set and one per observed value, only the dimensions core uses (every distinct value is a series of
its own downstream). ``incr``/``observe`` never raise. A cloud's adapter says what a line holds
(``_entry``) and where the lines go (``_write``).
"""

from __future__ import annotations

import json
import math
import threading
from collections import defaultdict

# The dimensions core uses; anything else (request ids, key ids, free text) is dropped.
DEFAULT_DIMENSIONS = frozenset({"model", "tenant", "status", "route", "layer", "limit", "code", "metric"})
MAX_VALUE_CHARS = 128
MAX_PENDING_VALUES = 1000  # flush by itself past this many held values: memory stays flat in a long job

DimensionKey = tuple[tuple[str, str], ...]


def unit_for(name: str) -> str:
    """The unit a metric's name implies (``*_seconds``, ``*_ms``, ``*_bytes``; else ``1``)."""
    if name.endswith("_seconds"):
        return "s"
    if name.endswith(("_ms", "_milliseconds")):
        return "ms"
    if name.endswith("_bytes"):
        return "By"
    return "1"


def plain_number(value: float) -> int | float:
    """A whole number as an int (as JSON shows it), up to what a double holds exactly."""
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


class MetricLines:
    def __init__(self, dimensions: frozenset[str] = DEFAULT_DIMENSIONS) -> None:
        self._allowed = dimensions
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
            dims = dict(key)
            for name, total in sorted(counters.get(key, {}).items()):
                lines.append(self._json(name, "counter", total, dims))
            for name, values in sorted(observed.get(key, {}).items()):
                lines.extend(self._json(name, "histogram", value, dims) for value in values)
        if lines:
            self._write(lines)

    def _entry(self, name: str, kind: str, value: float, dims: dict[str, str]) -> dict[str, object]:
        """One line's object (a cloud's adapter adds its own fields)."""
        unit = "1" if kind == "counter" else unit_for(name)
        return {"metric": name, "kind": kind, "value": plain_number(value), "unit": unit}

    def _write(self, lines: list[str]) -> None:
        raise NotImplementedError

    def _json(self, name: str, kind: str, value: float, dims: dict[str, str]) -> str:
        return json.dumps(self._entry(name, kind, value, dims), separators=(",", ":"))

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
