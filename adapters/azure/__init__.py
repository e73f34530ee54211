"""Azure adapters: Azure ML, Key Vault, metrics (Cosmos DB and Blob Storage: next)."""
