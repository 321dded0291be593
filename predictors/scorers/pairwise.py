"""Pairwise verdicts asked in both presentation orders, and order consistency as a confidence signal.

A pairwise judge sees the two responses as "Output (a)" and "Output (b)". Judges favour a position, so
asking once more with the two swapped and checking that the same response wins is a confidence signal
that needs no log-probabilities: any judge that can be asked twice has it. Winners here are always in the
item's own order: 1 = the item's `response`, 2 = its `alternative`, NaN = no verdict could be read.
"""

from __future__ import annotations

import numpy as np


def order_consistency(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """1 where both orders picked the same response, 0 where they differ, NaN where either has no verdict.

    A missing verdict gives NaN rather than 0 so the hybrid escalates it as "no certainty", which is what
    it is, instead of counting it as a measured disagreement.
    """
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    agree = (first == second).astype(np.float64)
    agree[np.isnan(first) | np.isnan(second)] = np.nan
    return agree


def winner_rewards(first: np.ndarray, second: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(reward, certainty) of winners asked response-first (`first`) and, if given, alternative-first.

    Reward is 1.0 where the response won the response-first ask and 0.0 where the alternative did; where
    that ask has no verdict the other order's is used, and NaN where neither has one. Certainty is the
    order consistency, NaN throughout when only one order was asked (one ask says nothing of its doubt).
    """
    first = np.asarray(first, dtype=np.float64)
    chosen = first if second is None else np.where(np.isnan(first), np.asarray(second, dtype=np.float64), first)
    rewards = np.where(np.isnan(chosen), np.nan, (chosen == 1).astype(np.float64))
    certainty = np.full(len(first), np.nan) if second is None else order_consistency(first, second)
    return rewards, certainty
