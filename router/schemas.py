"""Shapes shared by the SDK, the proxy and the decision log, each defined once."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class CandidateRecord(BaseModel):
    model: str
    expected_reward: float
    predicted_cost_usd: float
    predicted_output_tokens: float
    score: float


class Attempt(BaseModel):
    """One upstream call: which model, how long, and why it failed (None when it answered)."""

    model: str
    latency_ms: float
    error_type: str | None = None
    status_code: int | None = None
    error: str | None = None


class RoutingRecord(BaseModel):
    """Everything about one request's routing, kept with the response and appended to the decision log."""

    request_id: str
    routed: bool = Field(description="False when the caller named a model and routing was bypassed")
    chosen: str = Field(description="the policy's choice, or the named model")
    model: str | None = Field(None, description="the model that answered, after fallbacks")
    lambda_: float | None = None
    max_cost: float | None = None
    candidates: list[CandidateRecord] = Field(default_factory=list, description="best score first")
    decision_ms: float = 0.0
    attempts: list[Attempt] = Field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    realized_cost_usd: float | None = Field(None, description="from the response's usage and the registry's prices")
    spend_key: str | None = Field(None, description="the API key's name the spend is charged to")

    def candidate(self, model: str) -> CandidateRecord | None:
        return next((c for c in self.candidates if c.model == model), None)


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    attempts: list[Attempt] | None = None


class ErrorResponse(BaseModel):
    """The OpenAI error shape: {"error": {"message", "type", "param", "code"}}."""

    error: ErrorBody


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(BaseModel):
    """The OpenAI chat completion request; parameters beyond these pass through to LiteLLM unchanged."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False

    def passthrough(self) -> dict[str, Any]:
        """The OpenAI parameters to forward upstream (temperature, max_tokens, stream_options, ...)."""
        return dict(self.model_extra or {})


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class StoreHealth(BaseModel):
    backend: Literal["memory", "redis"]
    redis: Literal["up", "down", "not configured"]


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    live: bool
    ready: bool
    models: int
    store: StoreHealth
