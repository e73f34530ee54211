"""Fine-tune jobs: records, their state machine and events, and the service behind /v1/fine_tuning/jobs."""
