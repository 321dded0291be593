"""Cross-scorer agreement as a confidence signal: a second cheap scorer checks the first.

Where a judge cannot be asked twice cheaply, or is fooled the same way in both orders, another judge's
verdict is a different check: the first scorer's reward stands, and its certainty is whether the second
scorer puts the item on the same side of 0.5. Which check works on which kind of item is measured in
`benchmarks/judge_replay.py`.
"""

from __future__ import annotations

import asyncio

import numpy as np

from predictors.scorers.base import RewardScorer, ScoreBatch, ScoringItem


def agreement(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """1 where both rewards are on the same side of 0.5, 0 where not, NaN where either is missing."""
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    agree = ((first >= 0.5) == (second >= 0.5)).astype(np.float64)
    agree[np.isnan(first) | np.isnan(second)] = np.nan
    return agree


class AgreementScorer:
    """Scores every item with `first` and `second`; the first's rewards, certainty = their agreement.

    Tokens are both scorers'; errors are the first's (a missing second score only removes the certainty).
    """

    def __init__(self, name: str, first: RewardScorer, second: RewardScorer) -> None:
        self.name, self.first, self.second = name, first, second

    async def score(self, items: list[ScoringItem]) -> ScoreBatch:
        a, b = await asyncio.gather(self.first.score(items), self.second.score(items))
        return ScoreBatch(
            a.rewards,
            a.tokens + b.tokens,
            list(a.errors),
            slow=np.zeros(len(items), dtype=bool),
            certainty=agreement(a.rewards, b.rewards),
        )
