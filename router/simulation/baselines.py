"""Baseline reward estimates. Each is a (test prompts, models) matrix fed to the same policy as ERP."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from predictors.neighbors import nearest


def global_best_average(train_rewards: np.ndarray, n_test: int) -> np.ndarray:
    """One estimate per model: its mean training reward."""
    return np.tile(np.nanmean(train_rewards, axis=0), (n_test, 1))


def category_best_average(
    train_rewards: np.ndarray, train_categories: np.ndarray, test_categories: np.ndarray
) -> np.ndarray:
    """Per-category mean reward per model (the ERP paper's baseline); unseen categories get the global mean."""
    overall = np.nanmean(train_rewards, axis=0)
    estimates = np.tile(overall, (len(test_categories), 1))
    for category in np.unique(test_categories):
        in_train = train_categories == category
        if in_train.any():
            estimates[test_categories == category] = np.nanmean(train_rewards[in_train], axis=0)
    return estimates


def predicted_category_best_average(
    train_embeddings: np.ndarray,
    train_rewards: np.ndarray,
    train_categories: np.ndarray,
    test_embeddings: np.ndarray,
    random_state: int = 0,
) -> np.ndarray:
    """Category best average at the category a text classifier predicts: what a live request, carrying no category, gets.

    The classifier is a multinomial logistic regression on the embeddings, fitted on the training prompts;
    with a single training category it is the global best average.
    """
    if len(np.unique(train_categories)) < 2:
        return global_best_average(train_rewards, len(test_embeddings))
    classifier = LogisticRegression(max_iter=300, random_state=random_state).fit(train_embeddings, train_categories)
    return category_best_average(train_rewards, train_categories, classifier.predict(test_embeddings))


def knn_average(
    train_embeddings: np.ndarray, train_rewards: np.ndarray, test_embeddings: np.ndarray, k: int = 50
) -> np.ndarray:
    """Mean reward of the k most cosine-similar training prompts."""
    nearest_rows, _ = nearest(train_embeddings, test_embeddings, k)
    return np.nanmean(train_rewards[nearest_rows], axis=1)


def random_pair(n_test: int, n_models: int, pair: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random estimates over two models (cheapest and best on train); a lambda sweep traces a random mix."""
    rng = np.random.default_rng(seed)
    estimates = np.zeros((n_test, n_models))
    estimates[:, pair[1]] = rng.uniform(size=n_test)
    allowed = np.zeros(n_models, dtype=bool)
    allowed[list(pair)] = True
    return estimates, allowed
