"""Quality and safety checks of generated text: pure functions, no I/O (see ``report`` for the registry)."""

from __future__ import annotations

from core.validation.report import DEFAULT_METRICS, METRICS, Inputs, MetricInfo, Report, evaluate, select_metrics
from core.validation.result import MetricResult

__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "Inputs",
    "MetricInfo",
    "MetricResult",
    "Report",
    "evaluate",
    "select_metrics",
]
