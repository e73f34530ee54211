"""Adapters: implementations of the core ports for the local runtime and each cloud."""
