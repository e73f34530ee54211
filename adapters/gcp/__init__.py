"""Google Cloud adapters: Firestore, Cloud Storage, Secret Manager, Vertex AI, Cloud Logging metrics."""
