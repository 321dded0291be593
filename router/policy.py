"""The routing policy: pick argmax_m E[reward | prompt, m] - lambda * cost_m(prompt).

Pure numpy on (prompts, models) matrices, so the proxy, the SDK and the simulator
(where baselines are just other reward estimates) share exactly this code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def token_cost(input_tokens, output_tokens, usd_per_token: np.ndarray):
    """USD of input and output tokens at per-token (input, output) prices, the one price formula of the project.

    ``usd_per_token`` is (2,) for one model or (models, 2); token counts broadcast against it.
    """
    return input_tokens * usd_per_token[..., 0] + output_tokens * usd_per_token[..., 1]


def call_costs(input_tokens: np.ndarray, output_tokens: np.ndarray, usd_per_token: np.ndarray) -> np.ndarray:
    """USD per (prompt, model) from token counts and per-token (input, output) prices of shape (models, 2)."""
    input_tokens = np.asarray(input_tokens, dtype=np.float64)[:, None]
    return token_cost(input_tokens, np.asarray(output_tokens), usd_per_token)


def allowed_mask(
    costs: np.ndarray, allowed_models: np.ndarray | None = None, max_cost: float | None = None
) -> np.ndarray:
    """Which (prompt, model) pairs may be chosen; a prompt whose every model is over max_cost keeps its cheapest."""
    mask = np.ones(costs.shape, dtype=bool)
    if allowed_models is not None:
        mask &= np.asarray(allowed_models, dtype=bool)[None, :]
    if max_cost is not None:
        within = mask & (costs <= max_cost)
        nothing_within = ~within.any(axis=1)
        cheapest = np.where(mask, costs, np.inf).argmin(axis=1)
        within[nothing_within, cheapest[nothing_within]] = True
        mask = within
    return mask


def scores(rewards: np.ndarray, costs: np.ndarray, lambda_: float) -> np.ndarray:
    return rewards - lambda_ * costs


def choose(
    rewards: np.ndarray,
    costs: np.ndarray,
    lambda_: float,
    allowed_models: np.ndarray | None = None,
    max_cost: float | None = None,
) -> np.ndarray:
    """Index of the chosen model per prompt; ties go to the cheaper model."""
    if lambda_ < 0 or not np.isfinite(lambda_):
        raise ValueError(f"lambda must be a finite number >= 0, got {lambda_}")
    mask = allowed_mask(costs, allowed_models, max_cost)
    if not mask.any(axis=1).all():
        raise ValueError("no model is allowed; the allowed model set is empty")
    value = np.where(mask, scores(rewards, costs, lambda_), -np.inf)
    best = value.max(axis=1, keepdims=True)
    tied = value >= best - 1e-12
    return np.where(tied, costs, np.inf).argmin(axis=1)


def lambda_sweep(costs: np.ndarray, n: int = 80) -> np.ndarray:
    """0 plus a geometric grid that runs from 'almost free' to 'cheapest model everywhere'.

    Lambda is in reward per USD, so the grid is scaled by the typical call cost.
    """
    scale = float(np.median(costs[costs > 0])) if (costs > 0).any() else 1.0
    return np.r_[0.0, np.geomspace(1e-3, 1e4, n - 1) / scale]


def realized(choice: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The chosen model's entry per prompt."""
    return matrix[np.arange(len(choice)), choice]


@dataclass(frozen=True)
class BudgetLambda:
    lambda_: float
    mean_cost: float
    target_mean_cost: float
    achievable: bool


def lambda_for_budget(
    rewards: np.ndarray,
    costs: np.ndarray,
    target_mean_cost: float,
    allowed_models: np.ndarray | None = None,
    iterations: int = 100,
) -> BudgetLambda:
    """Smallest lambda whose choices on a calibration set cost at most the target on average.

    Mean cost is non-increasing in lambda, so a bisection on log(lambda) finds it.
    When even the cheapest allowed models exceed the target, it says so (achievable=False).
    """
    if not target_mean_cost > 0:
        raise ValueError(f"target mean cost must be > 0 USD, got {target_mean_cost}")

    def mean_cost(lambda_: float) -> float:
        return float(realized(choose(rewards, costs, lambda_, allowed_models), costs).mean())

    at_zero = mean_cost(0.0)
    if at_zero <= target_mean_cost:
        return BudgetLambda(0.0, at_zero, target_mean_cost, True)
    high = 1.0 / max(float(np.median(costs[costs > 0])), 1e-12)
    while mean_cost(high) > target_mean_cost and high < 1e18:
        high *= 10.0
    if mean_cost(high) > target_mean_cost:
        return BudgetLambda(high, mean_cost(high), target_mean_cost, False)
    low = high / 10.0 if mean_cost(high / 10.0) > target_mean_cost else 0.0
    for _ in range(iterations):
        middle = np.sqrt(low * high) if low > 0 else high / 2.0
        if mean_cost(middle) > target_mean_cost:
            low = middle
        else:
            high = middle
        if low > 0 and high / low < 1 + 1e-9:
            break
    return BudgetLambda(high, mean_cost(high), target_mean_cost, True)
