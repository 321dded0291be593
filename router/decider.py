"""The decider: from a conversation to a routing decision, with the serving cache and micro-batching.

A decision embeds the last user turn plus a bounded window of earlier turns, predicts every model's reward
and output length (cached in the store by text hash; concurrent misses share one batched pass), and picks
through ``RoutingEngine.decide``. Predicted costs count the whole conversation's input tokens.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace

import numpy as np

from predictors.dataset import CHARS_PER_TOKEN
from predictors.pool import PoolPrediction
from router.batching import Batcher
from router.engine import Decision, RoutingEngine
from router.errors import InvalidRequestError, ModelNotFoundError, PromptTooLargeError
from router.store import Store


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


def check_messages(messages: list[dict], max_chars: int) -> None:
    """A non-empty conversation of at most ``max_chars`` characters of text; else 400 or 413."""
    if not messages:
        raise InvalidRequestError("messages must be a non-empty list of chat messages", param="messages")
    size = sum(len(message_text(m)) for m in messages)
    if size > max_chars:
        raise PromptTooLargeError(
            f"the conversation has {size} characters; this router accepts at most {max_chars}", param="messages"
        )


def check_knobs(lambda_: float | None, max_cost: float | None) -> None:
    if lambda_ is not None and not (np.isfinite(lambda_) and lambda_ >= 0):
        raise InvalidRequestError(f"lambda must be a finite number >= 0, got {lambda_}", param="lambda")
    if max_cost is not None and not (np.isfinite(max_cost) and max_cost > 0):
        raise InvalidRequestError(f"max_cost must be a finite number of USD > 0, got {max_cost}", param="max_cost")


class Decider:
    """Decides conversations through the engine, reusing cached predictions and embeddings from the store."""

    def __init__(self, engine: RoutingEngine, store: Store, context_chars: int, max_prompt_chars: int) -> None:
        self.engine = engine
        self.store = store
        self.context_chars = context_chars
        self.max_prompt_chars = max_prompt_chars
        self._encoder_id = "+".join(part.encoder_id for part in engine.encoder.parts)
        self._fingerprint = _predictor_fingerprint(engine)
        self._batcher: Batcher = Batcher(self._predict_batch)

    def decide(
        self,
        messages: list[dict],
        lambda_: float | None = None,
        models: list[str] | None = None,
        max_cost: float | None = None,
    ) -> Decision:
        """The decision for this conversation, without calling any model."""
        started = time.perf_counter()
        check_messages(messages, self.max_prompt_chars)
        check_knobs(lambda_, max_cost)
        text = routing_text(messages, self.context_chars)
        conversation_tokens = sum(len(message_text(m)) for m in messages) / CHARS_PER_TOKEN
        prediction = self._predict(text)
        try:
            decision = self.engine.decide(prediction, np.array([conversation_tokens]), lambda_, models, max_cost)[0]
        except ValueError as exc:
            error = ModelNotFoundError if models and set(models) - set(self.engine.models) else InvalidRequestError
            raise error(str(exc), param="models") from None
        return replace(decision, decision_ms=(time.perf_counter() - started) * 1000)

    def _predict(self, text: str) -> PoolPrediction:
        """Rewards and output lengths from the store's cache, else from the cached embedding, else computed."""
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        prediction_key, embedding_key = f"pred:{self._fingerprint}:{digest}", f"emb:{self._encoder_id}:{digest}"
        cached_prediction, cached_embedding = self.store.get_cached([prediction_key, embedding_key])
        n_models = len(self.engine.models)
        if cached_prediction is not None and len(cached_prediction) == 2 * n_models * 8:
            rewards, output_tokens = np.frombuffer(cached_prediction, dtype=np.float64).reshape(2, 1, n_models)
            return PoolPrediction(rewards, output_tokens)
        embedding = None if cached_embedding is None else np.frombuffer(cached_embedding, dtype=np.float32)
        rewards, output_tokens, embedding = self._batcher.submit((text, embedding))
        fresh = {prediction_key: np.stack([rewards, output_tokens]).astype(np.float64).tobytes()}
        if cached_embedding is None:
            fresh[embedding_key] = embedding.astype(np.float32).tobytes()
        self.store.put_cached(fresh)
        return PoolPrediction(rewards[None, :], output_tokens[None, :])

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


def _predictor_fingerprint(engine: RoutingEngine) -> str:
    """Hash of the encoder, the model list and the fitted predictor files: cached predictions follow refits."""
    registry = engine.registry
    digest = hashlib.sha256(f"{registry.embedding}|{','.join(engine.models)}".encode())
    paths = [registry.shared_predictor] + [entry.predictor for entry in registry.enabled]
    for path in paths:
        digest.update(registry.path_of(path).read_bytes())
    return digest.hexdigest()[:16]
