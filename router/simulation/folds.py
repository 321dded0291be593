"""One fold of the offline routing simulation: fit the pool on the training prompts, route the test prompts.

Each fold fits the pool predictor with the same code as ``erp fit`` and routes its test prompts with
the same policy as the proxy; baselines are other reward estimates pushed through that same policy.
With a held-out model, the fold also fits the pool without it and adds it the way ``erp fit --model`` does.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import StratifiedKFold

from predictors.dataset import RoutingDataset
from predictors.pool import PoolPredictor
from predictors.reward import weighted_log_loss
from predictors.training import TrainingSet
from router.policy import call_costs, choose, lambda_sweep, realized
from router.simulation import baselines
from router.simulation.metrics import predictor_quality

ERP = "erp"


@dataclass(frozen=True)
class SimulationConfig:
    folds: int = 5
    seed: int = 0
    backend: str = "auto"
    encoder: str = "minilm"
    knn_k: int = 50
    n_lambdas: int = 200
    holdout_model: str | None = None
    n_jobs: int = 2
    n_members: int = 5


@dataclass
class Fold:
    """What one fold measured: per-lambda points per policy, single models, predictor quality."""

    frontiers: dict[str, np.ndarray] = field(default_factory=dict)  # policy -> (n_lambdas, 2) cost, reward
    single: np.ndarray | None = None  # (models, 2) cost, reward
    quality: dict[str, dict] = field(default_factory=dict)
    backends: dict[str, tuple[str, dict[str, float]]] = field(default_factory=dict)
    holdout_frontiers: dict[str, np.ndarray] = field(default_factory=dict)
    holdout_quality: dict | None = None
    holdout_backend: tuple[str, dict[str, float]] | None = None


@dataclass(frozen=True)
class TestSet:
    """Realized outcomes of the test prompts, the ground truth every policy is scored on."""

    rewards: np.ndarray
    costs: np.ndarray

    def frontier(
        self, estimates: np.ndarray, predicted_costs: np.ndarray, lambdas: np.ndarray, allowed: np.ndarray | None = None
    ) -> np.ndarray:
        points = []
        for lambda_ in lambdas:
            picked = choose(estimates, predicted_costs, float(lambda_), allowed)
            points.append((realized(picked, self.costs).mean(), realized(picked, self.rewards).mean()))
        return np.array(points)


def fold_splits(data: RoutingDataset, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified by category; falls back to plain shuffling when a category is too small to stratify."""
    categories = data.categories
    counts = Counter(categories)
    labels = categories if min(counts.values()) >= folds else np.zeros(len(categories))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels))


def fit_fold_pool(
    data: RoutingDataset, embeddings: np.ndarray, train: np.ndarray, config: SimulationConfig, models: list[str] | None = None
) -> PoolPredictor:
    """The pool fitted, as ``erp fit`` fits it, on the training prompts and these models (all if None)."""
    training = TrainingSet.from_dataset(data, embeddings, train, models)
    return PoolPredictor(config.encoder, config.backend, config.n_members, config.n_jobs, config.seed).fit(training)


def _quality(predicted: np.ndarray, rewards: np.ndarray, weights: np.ndarray) -> dict:
    quality = predictor_quality(predicted, rewards)
    quality["log_loss"] = weighted_log_loss(rewards, predicted, weights)
    return quality


def predict_fold(
    data: RoutingDataset, embeddings: np.ndarray, pool: PoolPredictor, test: np.ndarray
) -> tuple[np.ndarray, np.ndarray, TestSet]:
    """ERP's expected rewards and predicted call costs on the test prompts, and what those prompts really gave.

    Realized costs use the true output lengths where known and each model's typical length elsewhere.
    """
    input_tokens = data.input_tokens[test]
    estimates, predicted_tokens = pool.predict(embeddings[test], input_tokens, data.models)
    predicted_costs = call_costs(input_tokens, predicted_tokens, data.price_matrix)
    typical = pool.model_default_output_tokens(data.models)
    true_tokens = np.where(np.isfinite(data.output_tokens[test]), data.output_tokens[test], typical[None, :])
    return estimates, predicted_costs, TestSet(data.rewards[test], call_costs(input_tokens, true_tokens, data.price_matrix))


def run_fold(
    data: RoutingDataset, embeddings: np.ndarray, train: np.ndarray, test: np.ndarray, lambdas: np.ndarray, config: SimulationConfig
) -> Fold:
    pool = fit_fold_pool(data, embeddings, train, config)
    estimates, predicted_costs, truth = predict_fold(data, embeddings, pool, test)
    typical = pool.model_default_output_tokens(data.models)

    fold = Fold()
    fold.single = np.column_stack([truth.costs.mean(axis=0), truth.rewards.mean(axis=0)])
    train_rewards = data.rewards[train]
    n_test = len(test)
    train_cost = call_costs(data.input_tokens[train], np.tile(typical, (len(train), 1)), data.price_matrix).mean(axis=0)
    pair = (int(np.argmin(train_cost)), int(np.argmax(np.nanmean(train_rewards, axis=0))))
    random_estimates, pair_allowed = baselines.random_pair(n_test, len(data.models), pair, config.seed)
    fold.frontiers = {
        ERP: truth.frontier(estimates, predicted_costs, lambdas),
        "oracle": truth.frontier(truth.rewards, truth.costs, lambdas),
        "category_best_average": truth.frontier(
            baselines.category_best_average(train_rewards, data.categories[train], data.categories[test]),
            predicted_costs,
            lambdas,
        ),
        "predicted_category_best_average": truth.frontier(
            baselines.predicted_category_best_average(
                embeddings[train], train_rewards, data.categories[train], embeddings[test], config.seed
            ),
            predicted_costs,
            lambdas,
        ),
        "global_best_average": truth.frontier(baselines.global_best_average(train_rewards, n_test), predicted_costs, lambdas),
        "knn": truth.frontier(
            baselines.knn_average(embeddings[train], train_rewards, embeddings[test], config.knn_k), predicted_costs, lambdas
        ),
        "random_mix": truth.frontier(random_estimates, predicted_costs, lambdas, pair_allowed),
    }
    weights = data.sample_counts[test]
    for j, model in enumerate(data.models):
        fold.quality[model] = _quality(estimates[:, j], truth.rewards[:, j], weights[:, j])
        predictor = pool.model_predictors_[model]
        fold.backends[model] = (predictor.selected_backend, predictor.cv_log_loss)
    if config.holdout_model:
        _holdout(fold, data, embeddings, train, test, lambdas, config, truth)
    return fold


def _holdout(
    fold: Fold,
    data: RoutingDataset,
    embeddings: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    lambdas: np.ndarray,
    config: SimulationConfig,
    truth: TestSet,
) -> None:
    """Fit the pool without the model, route; then add it as ``erp fit --model`` does, on the frozen featurizer."""
    new = data.models.index(config.holdout_model)
    pool = fit_fold_pool(data, embeddings, train, config, [m for m in data.models if m != config.holdout_model])
    pool.add_model(config.holdout_model, TrainingSet.from_dataset(data, embeddings, train))
    input_tokens = data.input_tokens[test]
    estimates, tokens = pool.predict(embeddings[test], input_tokens, data.models)
    costs = call_costs(input_tokens, tokens, data.price_matrix)
    without = np.ones(len(data.models), dtype=bool)
    without[new] = False
    fold.holdout_frontiers = {
        "before": truth.frontier(estimates, costs, lambdas, without),
        "after": truth.frontier(estimates, costs, lambdas),
    }
    fold.holdout_quality = _quality(estimates[:, new], truth.rewards[:, new], data.sample_counts[test][:, new])
    predictor = pool.model_predictors_[config.holdout_model]
    fold.holdout_backend = (predictor.selected_backend, predictor.cv_log_loss)


def simulation_lambdas(data: RoutingDataset, n: int) -> np.ndarray:
    """One lambda sweep for every fold and policy, scaled to the dataset's typical call costs."""
    lengths = np.where(np.isfinite(data.output_tokens), data.output_tokens, np.nanmedian(data.output_tokens))
    return lambda_sweep(call_costs(data.input_tokens, lengths, data.price_matrix), n)
