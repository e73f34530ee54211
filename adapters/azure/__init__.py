"""Azure adapters: Cosmos DB, Blob Storage, Azure ML, Key Vault, metrics."""
