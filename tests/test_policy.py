import numpy as np
import pytest

from router.policy import call_costs, choose, lambda_for_budget, realized


def planted(rng, n=2000, m=6):
    rewards = rng.uniform(size=(n, m))
    prices = np.geomspace(1e-7, 1e-4, m)
    costs = rng.uniform(50, 2000, size=(n, 1)) * prices[None, :]
    return rewards, costs


def test_lambda_zero_picks_the_highest_predicted_reward(rng):
    rewards, costs = planted(rng)
    assert (choose(rewards, costs, 0.0) == rewards.argmax(axis=1)).all()


def test_large_lambda_picks_the_cheapest(rng):
    rewards, costs = planted(rng)
    assert (choose(rewards, costs, 1e12) == costs.argmin(axis=1)).all()


def test_ties_go_to_the_cheaper_model():
    rewards = np.array([[0.5, 0.5, 0.4]])
    costs = np.array([[2.0, 1.0, 0.5]])
    assert choose(rewards, costs, 0.0).tolist() == [1]


def test_allowed_models_and_max_cost_restrict_the_choice(rng):
    rewards, costs = planted(rng)
    allowed = np.array([True, False, True, False, False, False])
    assert set(choose(rewards, costs, 0.0, allowed)) <= {0, 2}
    cap = float(np.median(costs[:, 3]))
    picked = choose(rewards, costs, 0.0, max_cost=cap)
    within = realized(picked, costs) <= cap
    # Where nothing fits under the cap, the cheapest model is the answer.
    assert (within | (picked == costs.argmin(axis=1))).all()
    assert within.mean() > 0.9


def test_mean_cost_is_non_increasing_in_lambda(rng):
    rewards, costs = planted(rng)
    means = [realized(choose(rewards, costs, lam), costs).mean() for lam in np.r_[0, np.geomspace(1, 1e8, 40)]]
    assert all(a >= b - 1e-15 for a, b in zip(means, means[1:]))


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.5])
def test_budget_mode_meets_its_target_within_two_percent(rng, fraction):
    rewards, costs = planted(rng)
    most = realized(choose(rewards, costs, 0.0), costs).mean()
    target = fraction * most
    budget = lambda_for_budget(rewards, costs, target)
    assert budget.achievable
    spent = realized(choose(rewards, costs, budget.lambda_), costs).mean()
    assert spent <= target * 1.0 + 1e-15
    assert spent >= target * 0.98


def test_budget_mode_says_when_a_target_is_unreachable(rng):
    rewards, costs = planted(rng)
    budget = lambda_for_budget(rewards, costs, costs.min(axis=1).mean() * 0.5)
    assert not budget.achievable


def test_bad_lambda_is_rejected(rng):
    rewards, costs = planted(rng, n=10)
    with pytest.raises(ValueError, match="lambda"):
        choose(rewards, costs, -1.0)


def test_call_costs_use_input_and_output_prices():
    costs = call_costs(np.array([1000.0]), np.array([[500.0, 10.0]]), np.array([[1e-6, 2e-6], [3e-6, 4e-6]]))
    assert costs[0].tolist() == pytest.approx([1000 * 1e-6 + 500 * 2e-6, 1000 * 3e-6 + 10 * 4e-6])
