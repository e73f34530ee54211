"""The local runtime: an ASGI server and a CLI on the embedded defaults (SQLite, local models)."""
