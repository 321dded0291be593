"""The simulation's baselines: the predicted-category best average a live request can get."""

import numpy as np
import pytest

from router.simulation import baselines


def test_predicted_category_baseline_matches_the_true_category_one_where_text_tells_the_category(rng):
    categories = np.array(["math", "code"])[rng.integers(0, 2, size=400)]
    embeddings = rng.normal(size=(400, 8)) + np.where(categories == "math", 3.0, -3.0)[:, None]
    rewards = np.column_stack([categories == "math", categories == "code"]).astype(float) * 0.8 + 0.1
    truth = baselines.category_best_average(rewards[:300], categories[:300], categories[300:])
    predicted = baselines.predicted_category_best_average(embeddings[:300], rewards[:300], categories[:300], embeddings[300:])
    assert predicted == pytest.approx(truth)
    scrambled = baselines.predicted_category_best_average(rng.normal(size=(300, 8)), rewards[:300], categories[:300], embeddings[300:])
    assert np.abs(scrambled - truth).max() > 0.5  # text that says nothing about the category: the classifier guesses


def test_predicted_category_baseline_with_one_category_is_the_global_average(rng):
    rewards = rng.uniform(size=(50, 3))
    estimates = baselines.predicted_category_best_average(rng.normal(size=(50, 4)), rewards, np.full(50, "chat"), rng.normal(size=(7, 4)))
    assert estimates == pytest.approx(baselines.global_best_average(rewards, 7))
