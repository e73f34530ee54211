"""Structured JSON logs and a metrics sink that does nothing (the default)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOGGER_NAME = "textnlp"
# Fields that may never reach a log line, whatever a caller passes.
_FORBIDDEN = frozenset({"authorization", "api_key", "key", "token", "prompt", "messages", "input", "output", "text"})


class NullMetrics:
    def incr(self, name: str, value: float = 1.0, **dims: str) -> None:
        return None

    def observe(self, name: str, value: float, **dims: str) -> None:
        return None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            payload.update({k: v for k, v in fields.items() if k not in _FORBIDDEN})
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, separators=(",", ":"), default=str)


def configure_logging(level: str = "INFO") -> logging.Logger:
    logger = logging.getLogger(LOGGER_NAME)
    if not any(getattr(h, "_textnlp", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._textnlp = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    # Our lines carry their own fields; skip the frame walk and thread/process lookups per record.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    return logger


def log_event(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, msg, extra={"fields": fields})


def monotonic_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
