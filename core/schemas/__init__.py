"""Pydantic models of the HTTP API: what callers send and what they get back."""
