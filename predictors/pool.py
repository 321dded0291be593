"""The pool predictor: the frozen shared featurizer plus one independent predictor per model.

Used identically by ``erp fit``, ``erp route``, the SDK, the proxy and the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from predictors.featurizer import PromptFeaturizer
from predictors.length import OutputLengthPredictor
from predictors.reward import make_reward_head


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


class ModelPredictor(BaseEstimator):
    """One model's expected reward and output length, read off the shared prompt features.

    Features follow the featurizer's layout: prompt vector, then ``n_categories``
    category probabilities, then ``n_clusters`` cluster one-hot columns. From each
    group block the predictor keeps this model's own mean reward per group (shrunk
    toward its overall mean) and adds the prior sum_g membership(g) * mean reward(g)
    as a feature: category best average made soft and available from text alone,
    and the same at the finer grain of embedding clusters.
    """

    def __init__(
        self,
        backend: str = "auto",
        fallback_tokens: float = 256.0,
        n_categories: int = 0,
        n_clusters: int = 0,
        shrinkage: float = 10.0,
        random_state: int = 0,
    ) -> None:
        self.backend = backend
        self.fallback_tokens = fallback_tokens
        self.n_categories = n_categories
        self.n_clusters = n_clusters
        self.shrinkage = shrinkage
        self.random_state = random_state

    def _blocks(self, features: np.ndarray) -> list[np.ndarray]:
        end = features.shape[1]
        clusters = features[:, end - self.n_clusters : end]
        categories = features[:, end - self.n_clusters - self.n_categories : end - self.n_clusters]
        return [block for block in (categories, clusters) if block.shape[1]]

    def _reward_inputs(self, features: np.ndarray, input_tokens: np.ndarray) -> np.ndarray:
        priors = [_logit(block @ means)[:, None] for block, means in zip(self._blocks(features), self.group_means_)]
        dense = features[:, : features.shape[1] - self.n_clusters]
        return np.hstack([dense, np.log1p(np.asarray(input_tokens, dtype=np.float64))[:, None], *priors])

    def fit(
        self,
        features: np.ndarray,
        input_tokens: np.ndarray,
        rewards: np.ndarray,
        weights: np.ndarray,
        output_tokens: np.ndarray,
    ) -> "ModelPredictor":
        observed = weights > 0
        if not observed.any():
            raise ValueError("no outcomes to fit on: every prompt has zero samples for this model")
        overall = np.average(rewards[observed], weights=weights[observed])
        self.group_means_ = []
        for block in self._blocks(features[observed]):
            membership = block * weights[observed][:, None]
            self.group_means_.append(
                (membership.T @ rewards[observed] + self.shrinkage * overall) / (membership.sum(axis=0) + self.shrinkage)
            )
        self.reward_head_ = make_reward_head(self.backend, self.random_state).fit(
            self._reward_inputs(features[observed], input_tokens[observed]), rewards[observed], weights[observed]
        )
        self.length_head_ = OutputLengthPredictor(self.fallback_tokens, random_state=self.random_state).fit(
            features, input_tokens, output_tokens
        )
        return self

    @property
    def selected_backend(self) -> str:
        check_is_fitted(self, "reward_head_")
        return self.reward_head_.backend_

    def predict_reward(self, features: np.ndarray, input_tokens: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "reward_head_")
        return self.reward_head_.predict(self._reward_inputs(features, input_tokens))

    def predict_output_tokens(self, features: np.ndarray, input_tokens: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "length_head_")
        return self.length_head_.predict(features, input_tokens)


@dataclass
class PoolPredictor:
    """Shared featurizer + per-model predictors; predicts (prompts, models) matrices."""

    featurizer: PromptFeaturizer
    heads: dict[str, ModelPredictor] = field(default_factory=dict)

    def predict(
        self, embeddings: np.ndarray, input_tokens: np.ndarray, models: list[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Expected rewards and output tokens, each of shape (prompts, len(models))."""
        missing = [m for m in models if m not in self.heads]
        if missing:
            raise KeyError(f"no fitted predictor for model(s) {', '.join(missing)}")
        features = self.featurizer.transform(embeddings)
        rewards = np.column_stack([self.heads[m].predict_reward(features, input_tokens) for m in models])
        tokens = np.column_stack([self.heads[m].predict_output_tokens(features, input_tokens) for m in models])
        return rewards, tokens


def typical_output_tokens(output_tokens: np.ndarray, default: float = 256.0) -> float:
    """The pool's typical output length: the fallback for models whose lengths are unknown."""
    known = output_tokens[np.isfinite(output_tokens)]
    return float(np.median(known)) if known.size else default


def fit_model_predictors(
    features: np.ndarray,
    input_tokens: np.ndarray,
    rewards: np.ndarray,
    weights: np.ndarray,
    output_tokens: np.ndarray,
    models: list[str],
    fallback_tokens: list[float],
    n_categories: int,
    n_clusters: int,
    backend: str = "auto",
    random_state: int = 0,
    n_jobs: int = 2,
    progress: bool = False,
) -> dict[str, ModelPredictor]:
    """Fit each model's predictor independently (columns of the matrices), in parallel."""

    def fit_one(j: int) -> ModelPredictor:
        return ModelPredictor(backend, fallback_tokens[j], n_categories, n_clusters, random_state=random_state).fit(
            features, input_tokens, rewards[:, j], weights[:, j], output_tokens[:, j]
        )

    jobs = Parallel(n_jobs=n_jobs, return_as="generator")(delayed(fit_one)(j) for j in range(len(models)))
    fitted = list(tqdm(jobs, total=len(models), desc="fitting model predictors", disable=not progress, leave=False))
    return dict(zip(models, fitted))


def fit_pool(
    embeddings: np.ndarray,
    input_tokens: np.ndarray,
    rewards: np.ndarray,
    weights: np.ndarray,
    output_tokens: np.ndarray,
    models: list[str],
    categories: np.ndarray | None = None,
    fallback_tokens: list[float | None] | None = None,
    backend: str = "auto",
    random_state: int = 0,
    n_jobs: int = 2,
    progress: bool = False,
) -> PoolPredictor:
    """Fit the shared featurizer on every model's rewards, then each model's own predictor."""
    featurizer = PromptFeaturizer(random_state=random_state).fit(embeddings, rewards, weights, categories)
    typical = typical_output_tokens(output_tokens)
    fallbacks = [typical if f is None else float(f) for f in (fallback_tokens or [None] * len(models))]
    features = featurizer.transform(embeddings)
    heads = fit_model_predictors(
        features,
        input_tokens,
        rewards,
        weights,
        output_tokens,
        models,
        fallbacks,
        featurizer.n_categories_,
        featurizer.n_clusters,
        backend,
        random_state,
        n_jobs,
        progress,
    )
    return PoolPredictor(featurizer, heads)
