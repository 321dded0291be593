"""The one interface every reward scorer implements: score a batch of (prompt, response) pairs.

A pairwise scorer scores (prompt, response, alternative) triples through the same interface.

Collection (`erp collect`) and the scorer benchmark only see this interface, so a judge,
a local reward model and the fast/slow hybrid are interchangeable behind `--scorer NAME`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class ScoringItem:
    """One response to score; `model` names the pool model that wrote it (the hybrid's ERP check uses it).

    Pairwise judging sets `alternative`, a second response to the same prompt: the reward is then how
    surely `response` is the better of the two (1 = it is, 0 = the alternative is), so a pairwise judge
    fits the same interface and the hybrid's thresholds work on it unchanged.
    """

    prompt: str
    response: str
    model: str | None = None
    system: str | None = None
    alternative: str | None = None
    reference: str | None = None  # the prompt's reference answer, for scorers that check answers


@dataclass(frozen=True)
class ScoreBatch:
    """Rewards in [0, 1] aligned with the items; NaN marks a missing score, never 0.

    `tokens` is what scoring spent (judge prompt + completion tokens; 0 for a local model);
    `errors` holds one message per item (None where it scored) so a caller can record why.
    `slow` marks the items a hybrid sent to its slow judge (all False for other scorers).
    `certainty` is a fast scorer's confidence in each score (higher = surer; NaN where unknown),
    which the hybrid thresholds; scorers that have none leave it None.
    `stage` is, per item, the cascade stage whose score stands (0 = the hybrid's fast scorer, 1 = its slow
    part, k = the k-th nested slow part); None for scorers that are not hybrids.
    """

    rewards: np.ndarray
    tokens: int
    errors: list[str | None] = field(default_factory=list)
    slow: np.ndarray | None = None
    certainty: np.ndarray | None = None
    stage: np.ndarray | None = None


@runtime_checkable
class RewardScorer(Protocol):
    name: str

    async def score(self, items: list[ScoringItem]) -> ScoreBatch:
        """Score every item; one item's failure is recorded in `errors`, not raised."""
        ...
