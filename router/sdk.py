"""The Python SDK: ``Router.route`` decides, ``complete``/``acomplete`` call the chosen model through LiteLLM.

Routing and fallbacks live only here; the proxy serves through a ``Router`` too. A decision embeds the last
user turn plus a bounded window of earlier turns, predicts every model's reward and cost (cached in the
store by text hash; concurrent misses share one batched pass), and picks through ``RoutingEngine.decide``.
A failed call (timeout, rate limit, 5xx, context window) moves to the next model by score, and a stream
does the same until its first chunk.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import litellm
import numpy as np

from predictors.dataset import CHARS_PER_TOKEN
from predictors.scorers.completion import is_transient
from router.batching import Batcher
from router.engine import Decision, Prediction, RoutingEngine
from router.errors import (
    BudgetExceededError,
    InvalidRequestError,
    ModelNotFoundError,
    PromptTooLargeError,
    UpstreamError,
)
from router.registry import ModelEntry, ServingSettings
from router.schemas import Attempt, CandidateRecord, RoutingRecord
from router.store import Store, key_counter, model_counter, open_store

litellm.suppress_debug_info = True

RecordHook = Callable[[RoutingRecord], None]


def message_text(message: dict) -> str:
    """The text of one OpenAI message, whether its content is a string or a list of parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    return " ".join(part.get("text") or "" for part in content or [] if isinstance(part, dict))


def routing_text(messages: list[dict], context_chars: int) -> str:
    """The last user turn, preceded by at most ``context_chars`` of the turns before it (the newest kept)."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=len(messages) - 1)
    context: list[str] = []
    budget = context_chars
    for message in reversed(messages[:last]):
        if budget <= 0:
            break
        turn = f"{message.get('role')}: {message_text(message)}"[-budget:]
        context.append(turn)
        budget -= len(turn)
    return "\n\n".join([*reversed(context), message_text(messages[last])])


def is_fallback_error(exc: Exception) -> bool:
    """Whether another model may succeed: timeouts, rate limits, 5xx, connection errors, context too long."""
    return is_transient(exc) or isinstance(exc, litellm.ContextWindowExceededError)


@dataclass
class RoutedCompletion:
    """LiteLLM's response and how it was routed."""

    response: litellm.ModelResponse
    record: RoutingRecord


@dataclass
class _Call:
    """One request in flight: its record, the models to try in order, and the budget it reserved."""

    record: RoutingRecord
    entries: list[ModelEntry]
    reserved_usd: float = 0.0
    rejected: bool = False


class RoutedStream:
    """The answering model's chunks; ``record`` gets usage and realized cost when the stream ends."""

    def __init__(self, record: RoutingRecord, first: Any, rest: Iterator, end: Callable, keep_usage: bool) -> None:
        self.record, self._first, self._rest, self._end, self._keep_usage = record, first, rest, end, keep_usage

    def __iter__(self) -> Iterator[Any]:
        usage, error = None, None
        try:
            for chunk in _chain(self._first, self._rest):
                usage = getattr(chunk, "usage", None) or usage
                if self._keep_usage or not _usage_only(chunk):
                    yield chunk
        except Exception as exc:
            error = exc
            raise _midstream_error(self.record, exc) from exc
        finally:
            self._end(usage, error)


class AsyncRoutedStream(RoutedStream):
    async def __aiter__(self) -> AsyncIterator[Any]:
        usage, error, completed = None, None, False
        try:
            async for chunk in _achain(self._first, self._rest):
                usage = getattr(chunk, "usage", None) or usage
                if self._keep_usage or not _usage_only(chunk):
                    yield chunk
            completed = True
        except Exception as exc:
            error = exc
            raise _midstream_error(self.record, exc) from exc
        finally:
            # The store is written from a worker thread; a cancelled stream must not wait for it.
            done = asyncio.get_running_loop().run_in_executor(None, self._end, usage, error)
            if completed:
                await done


class Router:
    """Routes OpenAI-style chat requests over the registry's pool and calls the chosen model."""

    def __init__(self, engine: RoutingEngine, store: Store | None = None, on_record: RecordHook | None = None) -> None:
        self.engine = engine
        self.settings: ServingSettings = engine.registry.serving
        self.store = store or open_store(None, self.settings.cache_ttl_s, self.settings.cache_max_entries)
        self.on_record = on_record
        self.entries = {entry.name: entry for entry in engine.registry.enabled}
        self._prices = dict(zip(engine.models, engine.usd_per_token, strict=True))
        self._encoder_id = "+".join(part.encoder_id for part in engine.encoder.parts)
        self._fingerprint = _predictor_fingerprint(engine)
        self._batcher = Batcher(self._predict_batch)

    @classmethod
    def from_registry(
        cls,
        path: str | Path,
        store: Store | None = None,
        redis_url: str | None = None,
        on_record: RecordHook | None = None,
    ) -> "Router":
        """Load the registry's pool; state in Redis when ``redis_url`` (or $REDIS_URL) is set, else in process."""
        engine = RoutingEngine.from_registry(path)
        settings = engine.registry.serving
        if store is None:
            url = redis_url or os.environ.get("REDIS_URL")
            store = open_store(url, settings.cache_ttl_s, settings.cache_max_entries, settings.decision_log_max_len)
        return cls(engine, store, on_record)

    def route(
        self,
        messages: list[dict],
        lambda_: float | None = None,
        models: list[str] | None = None,
        max_cost: float | None = None,
    ) -> Decision:
        """The decision for this conversation, without calling any model."""
        started = time.perf_counter()
        _check_messages(messages, self.settings.max_prompt_chars)
        _check_knobs(lambda_, max_cost)
        text = routing_text(messages, self.settings.context_chars)
        conversation_tokens = sum(len(message_text(m)) for m in messages) / CHARS_PER_TOKEN
        prediction = self._predict(text, conversation_tokens)
        try:
            decision = self.engine.decide([text], lambda_, models, max_cost, prediction=prediction)[0]
        except ValueError as exc:
            error = ModelNotFoundError if models and set(models) - set(self.entries) else InvalidRequestError
            raise error(str(exc), param="models") from None
        return replace(decision, decision_ms=(time.perf_counter() - started) * 1000)

    def complete(
        self,
        messages: list[dict],
        *,
        lambda_: float | None = None,
        models: list[str] | None = None,
        max_cost: float | None = None,
        model: str | None = None,
        stream: bool = False,
        spend_key: str | None = None,
        budget_usd: float | None = None,
        **openai_kwargs: Any,
    ) -> RoutedCompletion | RoutedStream:
        """Route and call through ``litellm.completion``; ``model`` names a registry model to bypass routing.

        ``spend_key`` charges the spend to that name; with ``budget_usd`` the call is refused once it is spent.
        """
        call = self._start(messages, lambda_, models, max_cost, model, spend_key, budget_usd)
        keep_usage = _wants_usage(openai_kwargs)
        for entry in call.entries:
            attempt_started = time.perf_counter()
            try:
                response = litellm.completion(**self._call_args(entry, messages, stream, openai_kwargs))
                first = next(response, None) if stream else None
            except Exception as exc:
                if self._failed(call, entry, exc, attempt_started):
                    continue
                break
            self._answered(call, entry, attempt_started)
            if stream:
                return RoutedStream(call.record, first, response, self._ender(call), keep_usage)
            self._end(call, getattr(response, "usage", None), None)
            return RoutedCompletion(response, call.record)
        self._end(call, None, None)
        raise _exhausted(call)

    async def acomplete(
        self,
        messages: list[dict],
        *,
        lambda_: float | None = None,
        models: list[str] | None = None,
        max_cost: float | None = None,
        model: str | None = None,
        stream: bool = False,
        spend_key: str | None = None,
        budget_usd: float | None = None,
        **openai_kwargs: Any,
    ) -> RoutedCompletion | AsyncRoutedStream:
        """``complete`` through ``litellm.acompletion``; the decision and the store run in a worker thread."""
        call = await asyncio.to_thread(self._start, messages, lambda_, models, max_cost, model, spend_key, budget_usd)
        keep_usage = _wants_usage(openai_kwargs)
        for entry in call.entries:
            attempt_started = time.perf_counter()
            try:
                response = await litellm.acompletion(**self._call_args(entry, messages, stream, openai_kwargs))
                first = await anext(response, None) if stream else None
            except Exception as exc:
                if self._failed(call, entry, exc, attempt_started):
                    continue
                break
            self._answered(call, entry, attempt_started)
            if stream:
                return AsyncRoutedStream(call.record, first, response, self._ender(call), keep_usage)
            await asyncio.to_thread(self._end, call, getattr(response, "usage", None), None)
            return RoutedCompletion(response, call.record)
        await asyncio.to_thread(self._end, call, None, None)
        raise _exhausted(call)

    def _predict(self, text: str, conversation_tokens: float) -> Prediction:
        """Rewards and output lengths from the store's cache, else from the cached embedding, else computed."""
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        prediction_key, embedding_key = f"pred:{self._fingerprint}:{digest}", f"emb:{self._encoder_id}:{digest}"
        cached_prediction, cached_embedding = self.store.get_cached([prediction_key, embedding_key])
        tokens = np.array([conversation_tokens])
        n_models = len(self.engine.models)
        if cached_prediction is not None and len(cached_prediction) == 2 * n_models * 8:
            rewards, output_tokens = np.frombuffer(cached_prediction, dtype=np.float64).reshape(2, 1, n_models)
            return Prediction(tokens, rewards, output_tokens)
        embedding = None if cached_embedding is None else np.frombuffer(cached_embedding, dtype=np.float32)
        rewards, output_tokens, embedding = self._batcher.submit((text, embedding))
        fresh = {prediction_key: np.stack([rewards, output_tokens]).astype(np.float64).tobytes()}
        if cached_embedding is None:
            fresh[embedding_key] = embedding.astype(np.float32).tobytes()
        self.store.put_cached(fresh)
        return Prediction(tokens, rewards[None, :], output_tokens[None, :])

    def _predict_batch(self, items: list[tuple[str, np.ndarray | None]]) -> list[tuple[np.ndarray, ...]]:
        """One encoder pass over the prompts without a cached embedding, one predictor pass over all."""
        texts = [text for text, _ in items]
        embeddings = [embedding for _, embedding in items]
        missing = [i for i, embedding in enumerate(embeddings) if embedding is None]
        if missing:
            for i, vector in zip(missing, self.engine.encoder.encode([texts[i] for i in missing]), strict=True):
                embeddings[i] = vector
        prediction = self.engine.predict(texts, np.stack(embeddings))
        return [(prediction.rewards[i], prediction.output_tokens[i], embeddings[i]) for i in range(len(items))]

    def _start(
        self,
        messages: list[dict],
        lambda_: float | None,
        models: list[str] | None,
        max_cost: float | None,
        model: str | None,
        spend_key: str | None,
        budget_usd: float | None,
    ) -> _Call:
        """Decide (or take the named model), then reserve the predicted cost against the budget."""
        request_id = f"erp-{uuid.uuid4().hex}"
        if model is not None:
            if model not in self.entries:
                raise ModelNotFoundError(
                    f"the model {model!r} does not exist; use 'erp' or one of: {', '.join(self.entries)}", param="model"
                )
            _check_messages(messages, self.settings.max_prompt_chars)
            record = RoutingRecord(request_id=request_id, routed=False, chosen=model, spend_key=spend_key)
            input_tokens = sum(len(message_text(m)) for m in messages) / CHARS_PER_TOKEN
            call = _Call(record, [self.entries[model]], reserved_usd=input_tokens * float(self._prices[model][0]))
        else:
            decision = self.route(messages, lambda_, models, max_cost)
            record = RoutingRecord(
                request_id=request_id,
                routed=True,
                chosen=decision.model,
                lambda_=decision.lambda_,
                max_cost=max_cost,
                candidates=[CandidateRecord(**vars(c)) for c in decision.ranked()],
                decision_ms=decision.decision_ms,
                spend_key=spend_key,
            )
            order = [decision.model] + [
                c.model
                for c in decision.ranked()
                if c.model != decision.model and (max_cost is None or c.predicted_cost_usd <= max_cost)
            ]
            entries = [self.entries[name] for name in order[: self.settings.fallback_attempts]]
            call = _Call(record, entries, reserved_usd=record.candidate(decision.model).predicted_cost_usd)
        if budget_usd is not None and spend_key is not None:
            if not self.store.reserve(key_counter(spend_key), call.reserved_usd, budget_usd):
                raise BudgetExceededError(
                    f"the spend budget of {budget_usd:g} USD for API key {spend_key!r} is exhausted"
                )
        else:
            call.reserved_usd = 0.0
        return call

    def _call_args(self, entry: ModelEntry, messages: list[dict], stream: bool, openai_kwargs: dict) -> dict:
        args: dict[str, Any] = {"timeout": self.settings.timeout_s, **openai_kwargs}
        args.update(model=entry.litellm_model, messages=messages, stream=stream, max_retries=0)
        if entry.api_base:
            args["api_base"] = entry.api_base
        if entry.api_key:
            args["api_key"] = entry.api_key
        if stream:
            args["stream_options"] = {**(openai_kwargs.get("stream_options") or {}), "include_usage": True}
        return args

    def _failed(self, call: _Call, entry: ModelEntry, exc: Exception, started: float) -> bool:
        """Record a failed attempt; whether the next model should be tried."""
        status = getattr(exc, "status_code", None)
        status = status if isinstance(status, int) else None
        call.record.attempts.append(
            Attempt(
                model=entry.name,
                latency_ms=(time.perf_counter() - started) * 1000,
                error_type=type(exc).__name__,
                status_code=status,
                error=str(exc)[:500],
            )
        )
        if is_fallback_error(exc):
            return True
        call.rejected = status in (400, 422)
        return False

    def _answered(self, call: _Call, entry: ModelEntry, started: float) -> None:
        call.record.model = entry.name
        call.record.attempts.append(Attempt(model=entry.name, latency_ms=(time.perf_counter() - started) * 1000))

    def _ender(self, call: _Call) -> Callable[[Any, Exception | None], None]:
        return lambda usage, error: self._end(call, usage, error)

    def _end(self, call: _Call, usage: Any, error: Exception | None) -> None:
        """Settle spend and the reservation, append to the decision log, and notify the hook."""
        record = call.record
        if error is not None and record.attempts:
            record.attempts[-1].error_type = type(error).__name__
            record.attempts[-1].error = f"failed mid-stream: {str(error)[:450]}"
        increments: dict[str, float] = {}
        if record.model is not None and usage is not None:
            record.prompt_tokens, record.completion_tokens = usage.prompt_tokens, usage.completion_tokens
            input_price, output_price = self._prices[record.model]
            record.realized_cost_usd = float(usage.prompt_tokens * input_price + usage.completion_tokens * output_price)
            increments[model_counter(record.model)] = record.realized_cost_usd
        if record.spend_key is not None:
            increments[key_counter(record.spend_key)] = (record.realized_cost_usd or 0.0) - call.reserved_usd
        if increments:
            self.store.add_spend(increments)
        self.store.log_decision(record.model_dump(mode="json"))
        if self.on_record is not None:
            self.on_record(record)


def _exhausted(call: _Call) -> UpstreamError:
    """502 with every attempt; 400 when the upstream rejected the request itself (bad parameters)."""
    summary = "; ".join(f"{a.model}: {a.error_type} ({a.status_code})" for a in call.record.attempts)
    message = f"{len(call.record.attempts)} attempt(s) failed: {summary}"
    return UpstreamError(message, call.record, status=400 if call.rejected else 502)


def _check_knobs(lambda_: float | None, max_cost: float | None) -> None:
    if lambda_ is not None and not (np.isfinite(lambda_) and lambda_ >= 0):
        raise InvalidRequestError(f"lambda must be a finite number >= 0, got {lambda_}", param="lambda")
    if max_cost is not None and not (np.isfinite(max_cost) and max_cost > 0):
        raise InvalidRequestError(f"max_cost must be a finite number of USD > 0, got {max_cost}", param="max_cost")


def _check_messages(messages: list[dict], max_chars: int) -> None:
    if not messages:
        raise InvalidRequestError("messages must be a non-empty list of chat messages", param="messages")
    size = sum(len(message_text(m)) for m in messages)
    if size > max_chars:
        raise PromptTooLargeError(
            f"the conversation has {size} characters; this router accepts at most {max_chars}", param="messages"
        )


def _wants_usage(openai_kwargs: dict) -> bool:
    return bool((openai_kwargs.get("stream_options") or {}).get("include_usage"))


def _usage_only(chunk: Any) -> bool:
    """The trailing chunk that only carries usage (requested by the router, not by the caller)."""
    if getattr(chunk, "usage", None) is None:
        return False
    return all(
        choice.finish_reason is None and not (choice.delta.content or choice.delta.role or choice.delta.tool_calls)
        for choice in chunk.choices
    )


def _chain(first: Any, rest: Iterator) -> Iterator[Any]:
    if first is not None:
        yield first
        yield from rest


async def _achain(first: Any, rest: AsyncIterator) -> AsyncIterator[Any]:
    if first is not None:
        yield first
        async for chunk in rest:
            yield chunk


def _midstream_error(record: RoutingRecord, exc: Exception) -> UpstreamError:
    return UpstreamError(f"{record.model} failed mid-stream: {type(exc).__name__}: {str(exc)[:300]}", record)


def _predictor_fingerprint(engine: RoutingEngine) -> str:
    """Hash of the encoder, the model list and the fitted predictor files: cached predictions follow refits."""
    registry = engine.registry
    digest = hashlib.sha256(f"{registry.embedding}|{','.join(engine.models)}".encode())
    paths = [registry.shared_predictor] + [entry.predictor for entry in registry.enabled]
    for path in paths:
        digest.update(registry.path_of(path).read_bytes())
    return digest.hexdigest()[:16]
