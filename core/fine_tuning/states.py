"""The fine-tune job state machine: which status may follow which; terminal states are final."""

from __future__ import annotations

from typing import Literal

JobState = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
STATES: tuple[JobState, ...] = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
TRANSITIONS: dict[str, frozenset[str]] = {
    "validating_files": frozenset({"queued", "failed", "cancelled"}),
    "queued": frozenset({"running", "failed", "cancelled"}),
    "running": frozenset({"succeeded", "failed", "cancelled"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}


class IllegalTransition(ValueError):
    """A status change the state machine does not allow (a bug, or a race lost to a terminal state)."""

    def __init__(self, current: str, target: str) -> None:
        super().__init__(f"a fine-tune job cannot go from {current} to {target}")
        self.current = current
        self.target = target


def is_terminal(state: str) -> bool:
    return state in TERMINAL


def check(current: str, target: str) -> None:
    """Raise ``IllegalTransition`` unless ``target`` may directly follow ``current``."""
    if target not in TRANSITIONS.get(current, frozenset()):
        raise IllegalTransition(current, target)


def path(current: str, target: str) -> list[str]:
    """The legal steps from ``current`` to ``target`` (excluding ``current``), shortest first; [] if none.

    A backend that is polled now and then can skip states (queued, then already succeeded): the job
    still walks through each one, so every transition it records is legal.
    """
    if current == target:
        return []
    frontier: list[list[str]] = [[current]]
    seen = {current}
    while frontier:
        route = frontier.pop(0)
        for following in sorted(TRANSITIONS.get(route[-1], frozenset()), key=STATES.index):
            if following in seen:
                continue
            if following == target:
                return [*route[1:], following]
            seen.add(following)
            frontier.append([*route, following])
    return []
