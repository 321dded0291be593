"""The per-model predictor: one model's expected reward and output length from the shared prompt features."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from predictors.featurizer import FeatureLayout
from predictors.length import DEFAULT_OUTPUT_TOKENS, OutputLengthPredictor
from predictors.reward import make_reward_head


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


class ModelPredictor(BaseEstimator):
    """One model's expected reward and output length, read off the shared prompt features.

    Features follow ``layout`` (the featurizer's): one block per featurizer member. From each
    group kind in a block (category, source, cluster) it keeps this model's mean reward per group,
    shrunk toward its overall mean by ``shrinkage`` pseudo-prompts, and gives each reward head the
    prior sum_g membership(g) * mean reward(g) as a feature. One reward head per member block, seeded
    like the member; with ``backend="auto"`` the backend is chosen on the first block and reused.

    The expected reward is the equal-weight mean of the estimates ``predict_parts`` returns: the
    heads' mean; the category mixture (sum_c P(c | text) * mean reward in c) and the same over
    sources, where the layout has them; and, given neighbours, the mean reward on the prompt's
    nearest reference prompts. Without a layout the features are one dense block and there is no
    reference set. Evidence for this blend: benchmarks/RESULTS.md, *The parts of the expected reward*.
    """

    def __init__(
        self,
        backend: str = "auto",
        default_output_tokens: float = DEFAULT_OUTPUT_TOKENS,
        layout: FeatureLayout | None = None,
        shrinkage: float = 10.0,
        random_state: int = 0,
    ) -> None:
        self.backend = backend
        self.default_output_tokens = default_output_tokens
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
        self.length_head_ = OutputLengthPredictor(self.default_output_tokens, random_state=self.random_state).fit(
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
    def default_output_tokens_(self) -> float:
        """The output length assumed where this model's length is unknown: its known lengths' median, else the given default."""
        check_is_fitted(self, "length_head_")
        return self.length_head_.default_output_tokens_

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
