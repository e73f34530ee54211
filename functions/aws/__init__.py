"""AWS Lambda entry points: the HTTP API (``api.handler``) and the batch consumer (``batch.handler``)."""
