"""OpenAI-compatible fine-tuning jobs: request and response models."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

JobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
Auto = Literal["auto"]
FileId = Annotated[str, Field(min_length=1, max_length=128)]


class Hyperparameters(BaseModel):
    """``auto`` leaves the choice to the trainer; numbers are checked here, before any job exists."""

    model_config = ConfigDict(extra="forbid")

    n_epochs: Auto | Annotated[int, Field(strict=True, ge=1, le=50)] = "auto"
    batch_size: Auto | Annotated[int, Field(strict=True, ge=1, le=256)] = "auto"
    learning_rate_multiplier: Auto | Annotated[float, Field(strict=True, gt=0, le=10)] = "auto"


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="ignore")

    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["supervised"] = Field(description="only supervised fine-tuning (dpo and reinforcement are not)")
    supervised: SupervisedMethod | None = None


class FineTuneCreateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: Annotated[str, Field(min_length=1, max_length=256)]
    training_file: FileId
    validation_file: FileId | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    suffix: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")] | None = None
    seed: Annotated[int, Field(strict=True, ge=0, le=2_147_483_647)] | None = None
    integrations: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None

    @field_validator("integrations")
    @classmethod
    def _integrations(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if value:
            raise ValueError("integrations (Weights and Biases) are not supported")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and (len(value) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in value.items())):
            raise ValueError("at most 16 pairs, keys up to 64 characters and values up to 512")
        return value

    @model_validator(mode="after")
    def _one_place_for_hyperparameters(self) -> FineTuneCreateRequest:
        method = self.method.supervised if self.method is not None else None
        if self.hyperparameters is not None and method is not None and method.hyperparameters is not None:
            raise ValueError("give hyperparameters either at the top level or in method.supervised, not both")
        return self

    def chosen_hyperparameters(self) -> Hyperparameters:
        if self.method is not None and self.method.supervised is not None and self.method.supervised.hyperparameters:
            return self.method.supervised.hyperparameters
        return self.hyperparameters or Hyperparameters()


class JobHyperparameters(BaseModel):
    n_epochs: Auto | int | None = None
    batch_size: Auto | int | None = None
    learning_rate_multiplier: Auto | float | None = None


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobMethod(BaseModel):
    type: Literal["supervised"] = "supervised"
    supervised: dict[str, Any] | None = None


class FineTuningJobObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: JobHyperparameters
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: JobStatus
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[dict[str, Any]] = Field(default_factory=list)
    metadata: dict[str, str] | None = None
    method: JobMethod | None = None
    user_provided_suffix: str | None = None


class FineTuningJobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobObject]
    has_more: bool = False


class FineTuningJobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    data: dict[str, Any] | None = None
    type: Literal["message", "metrics"] = "message"


class FineTuningJobEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobEvent]
    has_more: bool = False
