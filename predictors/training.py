"""The one data object the pool predictor is fitted on: prompts x models, with everything a fit reads."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping

import numpy as np

from predictors.dataset import RoutingDataset
from predictors.length import DEFAULT_OUTPUT_TOKENS


@dataclass(frozen=True)
class TrainingSet:
    """Rows are prompts, columns are ``models``; every array is aligned with them.

    ``rewards`` is a prompt's mean reward over its samples (NaN where none), ``weights`` the sample
    counts behind it, ``output_tokens`` the mean output length (NaN where unknown). ``categories`` and
    ``sources`` are the dataset's labels, if any. ``default_output_tokens`` holds the lengths stated
    for some models (the registry's key of that name), used where the data knows none of theirs.
    ``source`` names the dataset, for the saved artifact.
    """

    embeddings: np.ndarray
    input_tokens: np.ndarray
    rewards: np.ndarray
    weights: np.ndarray
    output_tokens: np.ndarray
    models: list[str]
    categories: np.ndarray | None = None
    sources: np.ndarray | None = None
    default_output_tokens: Mapping[str, float] = field(default_factory=dict)
    source: str = ""

    @classmethod
    def from_dataset(
        cls,
        data: RoutingDataset,
        embeddings: np.ndarray,
        rows: np.ndarray | None = None,
        models: list[str] | None = None,
        default_output_tokens: Mapping[str, float] | None = None,
    ) -> "TrainingSet":
        """The dataset's prompts ``rows`` (all if None) and ``models`` (all if None); ``embeddings`` covers every prompt."""
        columns = [data.models.index(m) for m in models] if models is not None else list(range(len(data.models)))
        rows = np.arange(len(data.prompts)) if rows is None else np.asarray(rows)
        return cls(
            embeddings=embeddings[rows],
            input_tokens=data.input_tokens[rows],
            rewards=data.rewards[rows][:, columns],
            weights=data.sample_counts[rows][:, columns],
            output_tokens=data.output_tokens[rows][:, columns],
            models=[data.models[j] for j in columns],
            categories=data.categories[rows],
            sources=None if data.sources is None else data.sources[rows],
            default_output_tokens=dict(default_output_tokens or {}),
            source=data.source,
        )

    def __len__(self) -> int:
        return len(self.embeddings)

    def select(self, models: list[str]) -> "TrainingSet":
        """The same prompts with only these model columns."""
        columns = [self.models.index(m) for m in models]
        return replace(
            self,
            rewards=self.rewards[:, columns],
            weights=self.weights[:, columns],
            output_tokens=self.output_tokens[:, columns],
            models=list(models),
        )

    def median_output_tokens(self) -> float:
        """The median of every known output length, else DEFAULT_OUTPUT_TOKENS: the pool's default for unknown lengths."""
        known = self.output_tokens[np.isfinite(self.output_tokens)]
        return float(np.median(known)) if known.size else DEFAULT_OUTPUT_TOKENS
