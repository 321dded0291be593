"""Routing metrics of ../shared/README.md (APGR, cost to match best) and predictor quality."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import brier_score_loss, roc_auc_score

N_BUDGETS = 200


@dataclass(frozen=True)
class ReferencePoints:
    """The two single models every policy is measured between (on the test prompts)."""

    cheapest_cost: float
    cheapest_reward: float
    best_cost: float
    best_reward: float


def reference_points(costs: np.ndarray, rewards: np.ndarray) -> ReferencePoints:
    """From per-model (mean cost, mean reward): cheapest = lowest cost, best = highest reward."""
    cheapest = int(np.argmin(costs))
    best = int(np.argmax(rewards))
    return ReferencePoints(float(costs[cheapest]), float(rewards[cheapest]), float(costs[best]), float(rewards[best]))


def best_reward_within(costs: np.ndarray, rewards: np.ndarray, budget: float, floor: float) -> float:
    affordable = rewards[costs <= budget + 1e-15]
    return float(affordable.max()) if affordable.size else floor


def apgr(costs: np.ndarray, rewards: np.ndarray, ref: ReferencePoints, n_budgets: int = N_BUDGETS) -> float:
    """Average performance gap recovered over evenly spaced budgets from the cheapest to the best single model.

    At each budget: the best reward among the policy's points that cost at most that
    budget (the cheapest model's reward where none does). 0 = cheapest model, 1 = as
    good as the best single model at every budget.
    """
    budgets = np.linspace(ref.cheapest_cost, ref.best_cost, n_budgets)
    curve = [max(best_reward_within(costs, rewards, b, ref.cheapest_reward), ref.cheapest_reward) for b in budgets]
    gap = ref.best_reward - ref.cheapest_reward
    return float((np.mean(curve) - ref.cheapest_reward) / gap) if gap > 0 else float("nan")


def cost_to_match_best(costs: np.ndarray, rewards: np.ndarray, ref: ReferencePoints) -> float | None:
    """Lowest mean cost at which the policy reaches the best single model's reward, as a fraction of its cost."""
    matching = costs[rewards >= ref.best_reward - 1e-12]
    return float(matching.min() / ref.best_cost) if matching.size else None


def reward_at_best_cost(costs: np.ndarray, rewards: np.ndarray, ref: ReferencePoints) -> float:
    return best_reward_within(costs, rewards, ref.best_cost, ref.cheapest_reward)


def expected_calibration_error(predicted: np.ndarray, realized: np.ndarray, n_bins: int = 10) -> float:
    """Sample-weighted mean |mean predicted - mean realized| over equal-width probability bins."""
    bins = np.clip((predicted * n_bins).astype(int), 0, n_bins - 1)
    error = 0.0
    for b in np.unique(bins):
        in_bin = bins == b
        error += in_bin.mean() * abs(predicted[in_bin].mean() - realized[in_bin].mean())
    return float(error)


def predictor_quality(predicted: np.ndarray, realized: np.ndarray) -> dict[str, float | None]:
    """Spearman, ROC AUC (binary rewards only), Brier score and ECE of one model's predictions."""
    binary = bool(np.isin(realized, (0.0, 1.0)).all())
    varied = np.ptp(realized) > 0 and np.ptp(predicted) > 0
    return {
        "spearman": float(spearmanr(predicted, realized).statistic) if varied else None,
        "roc_auc": float(roc_auc_score(realized, predicted)) if binary and np.ptp(realized) > 0 else None,
        "brier": float(brier_score_loss(realized, predicted)) if binary else float(np.mean((predicted - realized) ** 2)),
        "ece": expected_calibration_error(predicted, realized),
    }
