"""The Google Cloud functions (Cloud Run functions): ``main.api`` (HTTP), ``main.batch`` (storage CloudEvents)."""
