"""Admin API models: tenants, keys, limits and the model registry."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.domain import ALL_SCOPES

Name = Annotated[str, Field(min_length=1, max_length=128)]
ModelName = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9._:/-]+$")]
MAX_ALIASES = 32
Positive = Annotated[int, Field(ge=0)]


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name


class LimitsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests_per_minute: Positive | None = None
    tokens_per_minute: Positive | None = None
    token_quota: Positive | None = None
    quota_period: Literal["day", "month"] = "month"


class LimitsOut(LimitsIn):
    pass


class TenantOut(BaseModel):
    id: str
    name: str
    created_at: float
    limits: LimitsOut
    suspended_at: float | None = None


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    scopes: Annotated[list[str], Field(min_length=1)] = ["generate", "embed"]
    expires_at: float | None = None

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: list[str]) -> list[str]:
        unknown = set(value) - ALL_SCOPES
        if unknown:
            raise ValueError(f"unknown scopes {sorted(unknown)}; known: {sorted(ALL_SCOPES)}")
        return value


class KeyOut(BaseModel):
    id: str
    object: Literal["api_key"] = "api_key"
    tenant_id: str
    name: str
    scopes: list[str]
    prefix: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    limits: LimitsOut
    key: str | None = Field(default=None, description="The secret key; returned once, at creation")


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    api_key: str | None = Field(
        default=None,
        description="The API key to exchange, when the request has no Authorization or x-api-key header",
    )
    scopes: list[str] | None = None


class TokenResponse(BaseModel):
    access_token: str
    token: str = Field(description="The same access token as access_token (the name some clients read)")
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - the OAuth token type, not a secret
    expires_in: int


class ModelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: ModelName
    kind: Literal["generation", "embedding"]
    backend: dict[str, Any] = Field(
        description='The route to the model: {"type": ..., and the fields its type needs}; the types are the'
        " ones this deployment serves (local, openai, sagemaker, ...)"
    )
    context_length: Annotated[int, Field(ge=16)] = 2048
    max_output_tokens: Annotated[int, Field(ge=1)] = 512
    price_per_1k_prompt_tokens: Annotated[float, Field(ge=0)] = 0.0
    price_per_1k_completion_tokens: Annotated[float, Field(ge=0)] = 0.0
    fallbacks: list[str] = []
    version: str = "1"
    owned_by: str = "textnlp"
    timeout_s: Annotated[float, Field(gt=0, le=900)] = 60.0
    max_retries: Annotated[int, Field(ge=0, le=10)] = 2
    metadata: dict[str, Any] = {}
    aliases: Annotated[
        list[ModelName],
        Field(max_length=MAX_ALIASES, description="Other names callers may use; unique across all models"),
    ] = []

    @model_validator(mode="after")
    def _consistent(self) -> ModelIn:
        # The backend route is checked against this deployment's backend types by the handler.
        if self.id in self.fallbacks or set(self.aliases) & set(self.fallbacks):
            raise ValueError("a model cannot be its own fallback")
        if self.id in self.aliases:
            raise ValueError("a model's id cannot also be its alias")
        if len(set(self.aliases)) != len(self.aliases):
            raise ValueError("aliases must not repeat")
        if self.max_output_tokens >= self.context_length:
            raise ValueError("max_output_tokens must be below context_length")
        return self


class ModelUpdate(ModelIn):
    id: ModelName | None = None  # type: ignore[assignment]
