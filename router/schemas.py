"""Shapes shared by the SDK, the proxy and the decision log, each defined once."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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


class BestOfRecord(BaseModel):
    """How a best-of-N candidate chose its answer: every sample's selector score and the winner."""

    scores: list[float] = Field(description="the selector's score (a logit) of each sample, in sampling order")
    chosen: int = Field(description="index of the sample answered with (the highest score)")
    selector: str = Field(description="the selector file's name")


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
    completion_tokens: int | None = Field(None, description="output tokens billed, reasoning tokens included")
    reasoning_tokens: int | None = Field(None, description="of the completion tokens, those spent reasoning")
    realized_cost_usd: float | None = Field(None, description="from the response's usage and the registry's prices")
    spend_key: str | None = Field(None, description="the API key's name the spend is charged to")
    best_of: BestOfRecord | None = Field(None, description="set when the answering candidate is a best-of-N one")

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


_FORWARD = ConfigDict(extra="forbid")
MAX_JSON_DEPTH = 64


def check_plain_json(value: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse values nested deeper than ``max_depth`` or holding text that is not valid Unicode.

    JSON allows both (``"\\ud800"`` decodes to a lone surrogate that cannot be encoded again), and either would
    otherwise fail later, far from the request, when the body is re-serialized for the upstream.
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError("the request holds a lone UTF-16 surrogate, which is not valid Unicode") from None
            continue
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        if children and depth >= max_depth:
            raise ValueError(f"the request nests deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children)
        if isinstance(item, dict):
            stack.extend((key, depth) for key in item)


class ContentPart(BaseModel):
    """One part of a message's content: text, an image, audio or a file, as OpenAI defines them."""

    model_config = _FORWARD

    type: Literal["text", "image_url", "input_audio", "file", "refusal"]
    text: str | None = None
    image_url: dict[str, Any] | None = None
    input_audio: dict[str, Any] | None = None
    file: dict[str, Any] | None = None
    refusal: str | None = None
    cache_control: dict[str, Any] | None = None


class ChatMessage(BaseModel):
    model_config = _FORWARD

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(None, max_length=256)
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    function_call: dict[str, Any] | None = None
    refusal: str | None = None
    cache_control: dict[str, Any] | None = None


class StreamOptions(BaseModel):
    model_config = _FORWARD

    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class ChatParameters(BaseModel):
    """The OpenAI chat-completion parameters the router forwards upstream: the allow-list.

    Anything else (connection settings such as ``base_url``, ``api_base``, ``api_key``, ``timeout``,
    ``custom_llm_provider``, LiteLLM's own ``mock_response`` or ``metadata``, or a router argument such as
    ``spend_key``) is refused: connections, keys and timeouts come only from the registry. Parameters that
    bill outside the registry's per-token prices (``audio``, ``modalities``, ``service_tier``,
    ``web_search_options``, ``prediction``) and stored completions (``store``, ``metadata``) are refused too.
    """

    model_config = _FORWARD

    @model_validator(mode="before")
    @classmethod
    def _plain_json(cls, data: Any) -> Any:
        check_plain_json(data)
        return data

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=128)
    stop: str | list[str] | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, int] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    seed: int | None = None
    user: str | None = Field(None, max_length=512)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    stream_options: StreamOptions | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    prompt_cache_key: str | None = Field(None, max_length=512)
    safety_identifier: str | None = Field(None, max_length=512)

    def forwarded(self) -> dict[str, Any]:
        """The parameters the caller set, ready for ``litellm.completion``."""
        return self.model_dump(exclude_none=True)

    @property
    def output_tokens_cap(self) -> int | None:
        """The caller's cap on generated tokens per choice (``max_completion_tokens`` wins), if any."""
        return self.max_completion_tokens or self.max_tokens


class ChatCompletionRequest(ChatParameters):
    """The body of ``POST /v1/chat/completions``: the model (or ``erp`` knobs), the messages, and the allow-list."""

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False

    def forwarded(self) -> dict[str, Any]:
        """The validated OpenAI parameters the caller set, without model, messages and stream."""
        return self.model_dump(exclude={"model", "messages", "stream"}, exclude_none=True)


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
