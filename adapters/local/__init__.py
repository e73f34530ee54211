"""Local adapters: the embedded store, blob storage and backends used on one machine."""
