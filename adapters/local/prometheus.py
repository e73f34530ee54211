"""Metrics kept in process and rendered as Prometheus text for ``GET /metrics``."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class PrometheusMetrics:
    """Counters and histograms with dimensions, one registry per process (per worker)."""

    def __init__(self, namespace: str = "textnlp") -> None:
        self._ns = namespace
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._hist: dict[str, dict[Labels, list[float]]] = defaultdict(dict)

    def incr(self, name: str, value: float = 1.0, **dims: str) -> None:
        key = tuple(sorted(dims.items()))
        with self._lock:
            series = self._counters[name]
            series[key] = series.get(key, 0.0) + value

    def observe(self, name: str, value: float, **dims: str) -> None:
        key = tuple(sorted(dims.items()))
        with self._lock:
            series = self._hist[name]
            state = series.get(key)
            if state is None:
                state = series[key] = [0.0] * (len(BUCKETS) + 2)  # buckets..., count, sum
            state[bisect.bisect_left(BUCKETS, value)] += 1
            state[-2] += 1
            state[-1] += value

    def value(self, name: str, **dims: str) -> float:
        return self._counters.get(name, {}).get(tuple(sorted(dims.items())), 0.0)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name, series in sorted(self._counters.items()):
                full = f"{self._ns}_{name}"
                lines.append(f"# TYPE {full} counter")
                lines.extend(f"{full}{_labels(k)} {v:g}" for k, v in sorted(series.items()))
            for name, hseries in sorted(self._hist.items()):
                full = f"{self._ns}_{name}"
                lines.append(f"# TYPE {full} histogram")
                for k, state in sorted(hseries.items()):
                    cumulative = 0.0
                    for bound, n in zip(BUCKETS, state, strict=False):
                        cumulative += n
                        le = 'le="' + f"{bound:g}" + '"'
                        lines.append(f"{full}_bucket{_labels(k, le)} {cumulative:g}")
                    inf = 'le="+Inf"'
                    lines.append(f"{full}_bucket{_labels(k, inf)} {state[-2]:g}")
                    lines.append(f"{full}_count{_labels(k)} {state[-2]:g}")
                    lines.append(f"{full}_sum{_labels(k)} {state[-1]:g}")
        return "\n".join(lines) + "\n"
