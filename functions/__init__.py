"""Thin entry points: one per cloud trigger, plus the local server."""
