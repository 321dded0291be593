"""The routing engine: registry + encoder + fitted pool predictor + policy, for live prompts.

``predict`` gives every candidate's expected reward and output length for prompt texts; ``decide`` turns
predictions and the input tokens each call is billed for into decisions through the policy. ``erp route`` uses
``route`` (both, for a bare prompt); the SDK's decider calls ``predict`` through its cache and batcher, then
``decide`` with the whole conversation's input tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from predictors.dataset import CHARS_PER_TOKEN
from predictors.embedding import Encoder
from predictors.pool import PoolPrediction, PoolPredictor
from router.policy import call_costs, choose, scores
from router.registry import Registry, RegistryError, load_registry
from router.schemas import CandidateRecord


@dataclass(frozen=True)
class Decision:
    model: str
    lambda_: float
    candidates: list[CandidateRecord]
    decision_ms: float

    def ranked(self) -> list[CandidateRecord]:
        """Candidates best score first: the chosen model, then the fallback order."""
        return sorted(self.candidates, key=lambda c: (-c.score, c.predicted_cost_usd))


def text_tokens(texts: list[str]) -> np.ndarray:
    """Estimated input tokens of bare prompt texts (characters / 4)."""
    return np.array([len(text) / CHARS_PER_TOKEN for text in texts])


class RoutingEngine:
    def __init__(self, registry: Registry, encoder: Encoder, pool: PoolPredictor, default_lambda: float) -> None:
        self.registry = registry
        self.encoder = encoder
        self.pool = pool
        self.default_lambda = default_lambda
        self.models = [m.name for m in registry.enabled]
        self.usd_per_token = registry.usd_per_token(registry.enabled)

    @classmethod
    def from_registry(cls, path: str | Path, cache_dir: Path | None = None) -> "RoutingEngine":
        registry = load_registry(path, require_artifacts=True)
        model_paths = {m.name: registry.path_of(m.predictor) for m in registry.enabled}
        pool = PoolPredictor.load(registry.path_of(registry.shared_predictor), model_paths, registry.embedding)
        default_lambda = registry.policy.lambda_
        if registry.policy.target_mean_cost_usd is not None:
            if pool.calibrated_lambda_ is None:
                raise RegistryError(
                    f"{registry.source}: key 'policy.target_mean_cost_usd' is set but no lambda was calibrated for it; "
                    "fix: run `erp fit --data DIR` again"
                )
            default_lambda = pool.calibrated_lambda_
        encoder = Encoder(registry.embedding, cache_dir, disk_cache=False).load()
        return cls(registry, encoder, pool, default_lambda)

    def allowed(self, models: list[str] | None) -> np.ndarray | None:
        if models is None:
            return None
        unknown = [m for m in models if m not in self.models]
        if unknown:
            raise ValueError(f"unknown or disabled model(s): {', '.join(unknown)}; enabled: {', '.join(self.models)}")
        if not models:
            raise ValueError("the allowed model set is empty")
        return np.isin(self.models, models)

    def predict(self, texts: list[str], embeddings: np.ndarray | None = None) -> PoolPrediction:
        """Every enabled model's expected reward and output length; pass embeddings to reuse cached ones."""
        embeddings = self.encoder.encode(texts) if embeddings is None else embeddings
        return self.pool.predict(embeddings, text_tokens(texts), self.models)

    def route(
        self, texts: list[str], lambda_: float | None = None, models: list[str] | None = None, max_cost: float | None = None
    ) -> list[Decision]:
        """Predict and decide for bare prompt texts, each billed as its own input (``erp route``)."""
        started = time.perf_counter()
        decisions = self.decide(self.predict(texts), text_tokens(texts), lambda_, models, max_cost)
        elapsed_ms = (time.perf_counter() - started) * 1000 / max(len(texts), 1)
        return [replace(decision, decision_ms=elapsed_ms) for decision in decisions]

    def decide(
        self,
        prediction: PoolPrediction,
        input_tokens: np.ndarray,
        lambda_: float | None = None,
        models: list[str] | None = None,
        max_cost: float | None = None,
    ) -> list[Decision]:
        """One decision per predicted prompt: every allowed candidate's reward, cost and score, and the choice.

        ``input_tokens`` are the tokens each call is billed for (the whole conversation, for the SDK).
        """
        started = time.perf_counter()
        lambda_ = self.default_lambda if lambda_ is None else float(lambda_)
        allowed = self.allowed(models)
        rewards, output_tokens = prediction.rewards, prediction.output_tokens
        costs = call_costs(input_tokens, output_tokens, self.usd_per_token)
        picked = choose(rewards, costs, lambda_, allowed, max_cost)
        value = scores(rewards, costs, lambda_)
        elapsed_ms = (time.perf_counter() - started) * 1000 / max(len(picked), 1)
        decisions = []
        for i, choice in enumerate(picked):
            candidates = [
                CandidateRecord(
                    model=m,
                    expected_reward=float(rewards[i, j]),
                    predicted_cost_usd=float(costs[i, j]),
                    predicted_output_tokens=float(output_tokens[i, j]),
                    score=float(value[i, j]),
                )
                for j, m in enumerate(self.models)
                if allowed is None or allowed[j]
            ]
            decisions.append(Decision(self.models[choice], lambda_, candidates, elapsed_ms))
        return decisions
