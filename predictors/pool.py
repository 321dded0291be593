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

from predictors.featurizer import FeatureLayout, PromptFeaturizer
from predictors.length import OutputLengthPredictor
from predictors.reward import make_reward_head


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


class ModelPredictor(BaseEstimator):
    """One model's expected reward and output length, read off the shared prompt features.

    Features follow the featurizer's ``layout``: one block per featurizer member, each
    a prompt vector, category and source probabilities and cluster one-hot columns.
    From each group (category, source, cluster) the predictor keeps this model's own
    mean reward per group (shrunk toward its overall mean) and adds the prior
    sum_g membership(g) * mean reward(g) as a feature: category best average made soft
    and available from text alone, and the same at finer grains. It fits one reward
    head per member block (seeded like the member); the backend is chosen once, on the
    first block, and reused for the others.

    The expected reward is the equal-weight mean of up to four estimates (``predict_parts``):
    the heads' mean, the category mixture (sum_c P(c | text) * this model's mean reward
    in c), the same mixture over sources where the data has them, and, given the prompt's
    nearest reference prompts, this model's mean reward on them. Over three seeds the
    mean routed better than the heads alone (benchmarks/RESULTS.md, *The parts of the
    expected reward*): the smoother estimates, built from the same labels and neighbours
    for every model, make the differences between models less noisy. Without a layout the
    features are one block of dense columns and there is no reference set.
    """

    def __init__(
        self,
        backend: str = "auto",
        fallback_tokens: float = 256.0,
        layout: FeatureLayout | None = None,
        shrinkage: float = 10.0,
        random_state: int = 0,
    ) -> None:
        self.backend = backend
        self.fallback_tokens = fallback_tokens
        self.layout = layout
        self.shrinkage = shrinkage
        self.random_state = random_state

    def _group_means(self, block: np.ndarray, rewards: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
        overall = np.average(rewards, weights=weights)
        means = {}
        for name, group in self.layout_.groups(block).items():
            membership = group * weights[:, None]
            means[name] = (membership.T @ rewards + self.shrinkage * overall) / (membership.sum(axis=0) + self.shrinkage)
        return means

    def _mixtures(self, block: np.ndarray, group_means: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """sum_g membership(g) * this model's mean reward in g, per group kind: the heads' priors and the mixture estimates."""
        return {name: group @ group_means[name] for name, group in self.layout_.groups(block).items()}

    def _reward_inputs(self, block: np.ndarray, input_tokens: np.ndarray, mixtures: dict[str, np.ndarray]) -> np.ndarray:
        priors = [_logit(mixture)[:, None] for mixture in mixtures.values()]
        log_tokens = np.log1p(np.asarray(input_tokens, dtype=np.float64))[:, None]
        return np.hstack([self.layout_.dense(block), log_tokens, *priors])

    def fit(
        self,
        features: np.ndarray,
        input_tokens: np.ndarray,
        rewards: np.ndarray,
        weights: np.ndarray,
        output_tokens: np.ndarray,
        reference_rows: np.ndarray | None = None,
    ) -> "ModelPredictor":
        """reference_rows: each prompt's row in the featurizer's reference set (-1 where none), for the local estimate."""
        observed = weights > 0
        if not observed.any():
            raise ValueError("no outcomes to fit on: every prompt has zero samples for this model")
        self.layout_ = self.layout or FeatureLayout(n_members=1, rank=features.shape[1], n_categories=0, n_clusters=0)
        self.reference_rewards_ = self._reference_rewards(reference_rows, rewards, weights)
        has_reference = self.reference_rewards_ is not None and np.isfinite(self.reference_rewards_).any()
        self.reference_mean_ = float(np.nanmean(self.reference_rewards_)) if has_reference else None
        blocks = self.layout_.members(features[observed])
        y, w, tokens = rewards[observed], weights[observed], input_tokens[observed]
        self.group_means_ = [self._group_means(block, y, w) for block in blocks]
        self.reward_heads_ = []
        backend = self.backend
        for seed, (block, means) in enumerate(zip(blocks, self.group_means_), start=self.random_state):
            head = make_reward_head(backend, seed).fit(self._reward_inputs(block, tokens, self._mixtures(block, means)), y, w)
            self.reward_heads_.append(head)
            backend = head.backend_
        self.length_head_ = OutputLengthPredictor(self.fallback_tokens, random_state=self.random_state).fit(
            self.layout_.without_sources(self.layout_.members(features)[0]), input_tokens, output_tokens
        )
        return self

    def _reference_rewards(self, reference_rows: np.ndarray | None, rewards: np.ndarray, weights: np.ndarray) -> np.ndarray | None:
        """This model's mean reward on each reference prompt; NaN where it has no outcome there."""
        if reference_rows is None or not self.layout_.n_reference:
            return None
        reference_rows = np.asarray(reference_rows)
        known = (weights > 0) & (reference_rows >= 0)
        rows = reference_rows[known]
        total, count = np.zeros(self.layout_.n_reference), np.zeros(self.layout_.n_reference)
        np.add.at(total, rows, weights[known] * rewards[known])
        np.add.at(count, rows, weights[known])
        return np.divide(total, count, out=np.full(len(total), np.nan), where=count > 0)

    @property
    def selected_backend(self) -> str:
        check_is_fitted(self, "reward_heads_")
        return self.reward_heads_[0].backend_

    @property
    def cv_log_loss(self) -> dict[str, float]:
        """The backend selection's cross-validated log-loss per candidate (empty when the backend was forced)."""
        check_is_fitted(self, "reward_heads_")
        return self.reward_heads_[0].cv_log_loss_

    def predict_parts(
        self, features: np.ndarray, input_tokens: np.ndarray, neighbors: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """The estimates whose mean is the expected reward: 'heads', 'category' and 'source' (with those labels), 'neighbors'.

        The neighbour estimate needs neighbours and outcomes on at least one reference prompt; a model
        that joined with outcomes on other prompts only has none, rather than a copy of its heads.
        """
        check_is_fitted(self, "reward_heads_")
        blocks = self.layout_.members(features)
        mixtures = [self._mixtures(block, means) for block, means in zip(blocks, self.group_means_)]
        parts = {
            "heads": np.mean(
                [
                    head.predict(self._reward_inputs(block, input_tokens, mixture))
                    for head, block, mixture in zip(self.reward_heads_, blocks, mixtures)
                ],
                axis=0,
            )
        }
        for label in ("category", "source"):
            if label in mixtures[0]:
                parts[label] = np.mean([mixture[label] for mixture in mixtures], axis=0)
        if neighbors is not None and self.reference_mean_ is not None:
            local = self.reference_rewards_[neighbors]
            seen = np.isfinite(local)
            counts = seen.sum(axis=1)
            parts["neighbors"] = np.where(
                counts > 0, np.where(seen, local, 0.0).sum(axis=1) / np.maximum(counts, 1), self.reference_mean_
            )
        return parts

    def predict_reward(self, features: np.ndarray, input_tokens: np.ndarray, neighbors: np.ndarray | None = None) -> np.ndarray:
        return np.mean(list(self.predict_parts(features, input_tokens, neighbors).values()), axis=0)

    def predict_output_tokens(self, features: np.ndarray, input_tokens: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "length_head_")
        return self.length_head_.predict(self.layout_.without_sources(self.layout_.members(features)[0]), input_tokens)


@dataclass
class PoolPredictor:
    """Shared featurizer + per-model predictors; predicts (prompts, models) matrices."""

    featurizer: PromptFeaturizer
    heads: dict[str, ModelPredictor] = field(default_factory=dict)

    def _featurize(self, embeddings: np.ndarray, models: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        missing = [m for m in models if m not in self.heads]
        if missing:
            raise KeyError(f"no fitted predictor for model(s) {', '.join(missing)}")
        return self.featurizer.transform(embeddings), self.featurizer.neighbors(embeddings)

    def predict(
        self, embeddings: np.ndarray, input_tokens: np.ndarray, models: list[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Expected rewards and output tokens, each of shape (prompts, len(models))."""
        features, neighbors = self._featurize(embeddings, models)
        rewards = np.column_stack([self.heads[m].predict_reward(features, input_tokens, neighbors) for m in models])
        tokens = np.column_stack([self.heads[m].predict_output_tokens(features, input_tokens) for m in models])
        return rewards, tokens

    def predict_parts(self, embeddings: np.ndarray, input_tokens: np.ndarray, models: list[str]) -> dict[str, np.ndarray]:
        """Each part of the expected reward as (prompts, len(models)), NaN for a model without that part: for ablations."""
        features, neighbors = self._featurize(embeddings, models)
        per_model = [self.heads[m].predict_parts(features, input_tokens, neighbors) for m in models]
        names = dict.fromkeys(name for parts in per_model for name in parts)
        absent = np.full(len(features), np.nan)
        return {name: np.column_stack([parts.get(name, absent) for parts in per_model]) for name in names}


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
    layout: FeatureLayout,
    reference_rows: np.ndarray | None = None,
    backend: str = "auto",
    random_state: int = 0,
    n_jobs: int = 2,
    progress: bool = False,
) -> dict[str, ModelPredictor]:
    """Fit each model's predictor independently (columns of the matrices), in parallel.

    The shared arrays go to the workers as arguments, so joblib memory-maps them once
    instead of pickling them into every task.
    """
    jobs = Parallel(n_jobs=n_jobs, return_as="generator")(
        delayed(ModelPredictor(backend, fallback_tokens[j], layout, random_state=random_state).fit)(
            features, input_tokens, rewards[:, j], weights[:, j], output_tokens[:, j], reference_rows
        )
        for j in range(len(models))
    )
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
    sources: np.ndarray | None = None,
    fallback_tokens: list[float | None] | None = None,
    backend: str = "auto",
    random_state: int = 0,
    n_jobs: int = 2,
    progress: bool = False,
    n_members: int = 5,
) -> PoolPredictor:
    """Fit the shared featurizer on every model's rewards, then each model's own predictor."""
    featurizer = PromptFeaturizer(n_members=n_members, n_jobs=n_jobs, random_state=random_state).fit(
        embeddings, rewards, weights, categories, sources
    )
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
        featurizer.layout,
        np.arange(len(embeddings)),  # the reference set is the featurizer's training prompts, in order
        backend,
        random_state,
        n_jobs,
        progress,
    )
    return PoolPredictor(featurizer, heads)
