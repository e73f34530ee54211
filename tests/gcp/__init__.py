"""Google Cloud adapters against the Firestore and Cloud Storage emulators and local Vertex AI servers."""
