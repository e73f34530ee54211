"""Time and identifiers, injected so tests control them."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass


class SystemClock:
    def now(self) -> float:
        return time.time()


@dataclass
class FixedClock:
    """A clock tests move by hand."""

    t: float = 1_790_000_000.0

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def new_id(prefix: str, nbytes: int = 12) -> str:
    """A random, URL-safe identifier such as ``ten_3fa9...``."""
    return f"{prefix}_{secrets.token_hex(nbytes)}"
