"""UnavailableFineTuner: the local runtime's FineTuner, which says plainly that it cannot train."""

from __future__ import annotations

from core.fine_tuning.job import FineTuneJob, FineTuningUnavailable, TunerStatus

MESSAGE = "fine-tuning runs on the cloud backends (SageMaker, Vertex AI, Azure ML); this local runtime cannot train"


class UnavailableFineTuner:
    """Refuses every job before it is recorded (``check``), so no fake job and never a fake success.

    ``POST /v1/fine_tuning/jobs`` answers 400 ``fine_tuning_unavailable`` with ``MESSAGE`` once the
    request itself is valid (model, files and hyperparameters are still checked first).
    """

    name = "local"

    def check(self, job: FineTuneJob) -> None:
        raise FineTuningUnavailable(MESSAGE)

    def start(self, job: FineTuneJob, training_key: str, validation_key: str | None) -> str:
        raise FineTuningUnavailable(MESSAGE)

    def status(self, job: FineTuneJob) -> TunerStatus:
        return TunerStatus("failed", error=MESSAGE)

    def cancel(self, job: FineTuneJob) -> None:
        return None
