import numpy as np
import pytest

from router.simulation.metrics import (
    ReferencePoints,
    apgr,
    cost_to_match_best,
    expected_calibration_error,
    predictor_quality,
    reward_at_best_cost,
)

REF = ReferencePoints(cheapest_cost=1.0, cheapest_reward=0.4, best_cost=10.0, best_reward=0.8)


def test_cheapest_model_alone_has_apgr_zero():
    assert apgr(np.array([1.0]), np.array([0.4]), REF) == pytest.approx(0.0)


def test_best_single_reward_at_every_budget_has_apgr_one():
    # A policy as good as the best single model at every budget, the cheapest included.
    assert apgr(np.array([1.0, 10.0]), np.array([0.8, 0.8]), REF) == pytest.approx(1.0)


def test_best_single_model_alone_counts_only_where_affordable():
    # The protocol's floor: below the best model's cost it reaches nothing, so only the last of 200 budgets counts.
    assert apgr(np.array([10.0]), np.array([0.8]), REF) == pytest.approx(1 / 200)


def test_linear_interpolation_between_the_two_has_apgr_near_half():
    costs = np.linspace(1, 10, 1000)
    assert apgr(costs, np.interp(costs, [1, 10], [0.4, 0.8]), REF) == pytest.approx(0.5, abs=0.01)


def test_an_oracle_above_the_best_single_exceeds_one():
    assert apgr(np.array([1.0, 2.0]), np.array([0.85, 0.9]), REF) > 1


def test_cost_to_match_best_and_reward_at_best_cost():
    costs, rewards = np.array([2.0, 5.0, 12.0]), np.array([0.6, 0.81, 0.9])
    assert cost_to_match_best(costs, rewards, REF) == pytest.approx(0.5)
    assert cost_to_match_best(costs[:1], rewards[:1], REF) is None
    assert reward_at_best_cost(costs, rewards, REF) == pytest.approx(0.81)


def test_calibration_error_of_calibrated_and_biased_predictions(rng):
    p = rng.uniform(size=50_000)
    y = (rng.uniform(size=p.size) < p).astype(float)
    assert expected_calibration_error(p, y) < 0.01
    assert expected_calibration_error(np.clip(p + 0.2, 0, 1), y) > 0.15


def test_predictor_quality_on_binary_rewards(rng):
    p = rng.uniform(size=5000)
    y = (rng.uniform(size=p.size) < p).astype(float)
    quality = predictor_quality(p, y)
    assert quality["roc_auc"] == pytest.approx(0.83, abs=0.03)
    assert quality["spearman"] > 0.4
    assert quality["brier"] == pytest.approx(1 / 6, abs=0.01)
    assert predictor_quality(p, p)["roc_auc"] is None  # not binary


def test_blend_table_pools_seeds_and_pairs_gains_fold_by_fold():
    from benchmarks.blends import ERP, VARIANTS, table

    def fold(erp: float, gain: float, match: float | None) -> dict[str, tuple[float, float | None]]:
        return {name: (erp + (gain if name != ERP else 0.0), match) for name in VARIANTS}

    lines = table({0: [fold(0.90, 0.02, 0.6), fold(0.94, 0.00, None)], 1: [fold(0.92, 0.01, 0.5), fold(0.96, -0.01, 0.7)]})
    assert len(lines) == 2 + len(VARIANTS)
    erp_row, blend_row = lines[2], lines[3]
    assert erp_row == f"| {ERP} | 0.920 / 0.600 (1/2) | 0.940 / 0.600 (2/2) | 0.930 / 0.600 (3/4) | - |"
    assert blend_row.endswith("| +0.0050 ± 0.0112 (2/4) |")
