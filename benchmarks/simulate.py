"""Offline routing simulation: K-fold cross-validation by prompt, ERP against baselines.

Each fold fits the pool predictor on its training prompts with the same code as
``erp fit`` and routes its test prompts with the same policy as the proxy. Baselines
are other reward estimates pushed through that same policy.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import StratifiedKFold
from tqdm.auto import tqdm

from benchmarks import baselines
from benchmarks.metrics import (
    Reference as RefPoints,
    apgr,
    cost_to_match_best,
    predictor_quality,
    reference_points,
    reward_at_best_cost,
)
from benchmarks.report import (
    FrontierPoint,
    Holdout,
    PolicyMetrics,
    PredictorQuality,
    Reference,
    Report,
    SingleModel,
    Timing,
)
from predictors.dataset import RoutingDataset
from predictors.embedding import Encoder
from predictors.pool import PoolPredictor, fit_model_predictors, fit_pool
from predictors.reward import weighted_log_loss
from router.policy import call_costs, choose, lambda_sweep, realized

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


def fit_fold_pool(data: RoutingDataset, embeddings: np.ndarray, train: np.ndarray, columns: list[int], config: SimulationConfig) -> PoolPredictor:
    models = [data.models[j] for j in columns]
    return fit_pool(
        embeddings[train],
        data.input_tokens[train],
        data.rewards[train][:, columns],
        data.sample_counts[train][:, columns],
        data.output_tokens[train][:, columns],
        models,
        categories=data.categories[train],
        sources=None if data.sources is None else data.sources[train],
        backend=config.backend,
        random_state=config.seed,
        n_jobs=config.n_jobs,
        n_members=config.n_members,
    )


def _quality(predicted: np.ndarray, rewards: np.ndarray, weights: np.ndarray) -> dict:
    quality = predictor_quality(predicted, rewards)
    quality["log_loss"] = weighted_log_loss(rewards, predicted, weights)
    return quality


def typical_tokens(pool: PoolPredictor, models: list[str]) -> np.ndarray:
    """Each model's typical output length: the fallback where a length is unknown."""
    return np.array([pool.heads[m].length_head_.typical_tokens_ for m in models])


def predict_fold(
    data: RoutingDataset, embeddings: np.ndarray, pool: PoolPredictor, test: np.ndarray
) -> tuple[np.ndarray, np.ndarray, TestSet]:
    """ERP's expected rewards and predicted call costs on the test prompts, and what those prompts really gave.

    Realized costs use the true output lengths where known and each model's typical length elsewhere.
    """
    input_tokens = data.input_tokens[test]
    estimates, predicted_tokens = pool.predict(embeddings[test], input_tokens, data.models)
    predicted_costs = call_costs(input_tokens, predicted_tokens, data.price_matrix)
    typical = typical_tokens(pool, data.models)
    true_tokens = np.where(np.isfinite(data.output_tokens[test]), data.output_tokens[test], typical[None, :])
    return estimates, predicted_costs, TestSet(data.rewards[test], call_costs(input_tokens, true_tokens, data.price_matrix))


def run_fold(
    data: RoutingDataset, embeddings: np.ndarray, train: np.ndarray, test: np.ndarray, lambdas: np.ndarray, config: SimulationConfig
) -> Fold:
    pool = fit_fold_pool(data, embeddings, train, list(range(len(data.models))), config)
    estimates, predicted_costs, truth = predict_fold(data, embeddings, pool, test)
    typical = typical_tokens(pool, data.models)

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
        "global_best_average": truth.frontier(baselines.global_best_average(train_rewards, n_test), predicted_costs, lambdas),
        "knn": truth.frontier(
            baselines.knn_average(embeddings[train], train_rewards, embeddings[test], config.knn_k), predicted_costs, lambdas
        ),
        "random_mix": truth.frontier(random_estimates, predicted_costs, lambdas, pair_allowed),
    }
    weights = data.sample_counts[test]
    for j, model in enumerate(data.models):
        fold.quality[model] = _quality(estimates[:, j], truth.rewards[:, j], weights[:, j])
        head = pool.heads[model]
        fold.backends[model] = (head.selected_backend, head.cv_log_loss)
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
    """Fit the pool without the model, route; then add it by fitting only its head on the frozen featurizer."""
    new = data.models.index(config.holdout_model)
    others = [j for j in range(len(data.models)) if j != new]
    pool = fit_fold_pool(data, embeddings, train, others, config)
    train_features = pool.featurizer.transform(embeddings[train])
    typical = float(np.median(typical_tokens(pool, [data.models[j] for j in others])))
    pool.heads.update(
        fit_model_predictors(
            train_features,
            data.input_tokens[train],
            data.rewards[train][:, [new]],
            data.sample_counts[train][:, [new]],
            data.output_tokens[train][:, [new]],
            [config.holdout_model],
            [typical],
            pool.featurizer.layout,
            pool.featurizer.reference_rows(embeddings[train]),
            config.backend,
            config.seed,
            n_jobs=1,
        )
    )
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
    head = pool.heads[config.holdout_model]
    fold.holdout_backend = (head.selected_backend, head.cv_log_loss)


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    known = [v for v in values if v is not None and np.isfinite(v)]
    if not known:
        return None, None
    return float(np.mean(known)), float(np.std(known))


def _policy_metrics(frontiers: list[np.ndarray], refs: list[RefPoints]) -> PolicyMetrics:
    per_fold = [
        (apgr(f[:, 0], f[:, 1], r), cost_to_match_best(f[:, 0], f[:, 1], r), reward_at_best_cost(f[:, 0], f[:, 1], r))
        for f, r in zip(frontiers, refs)
    ]
    apgr_mean, apgr_std = _mean_std([p[0] for p in per_fold])
    match_mean, match_std = _mean_std([p[1] for p in per_fold])
    reward_mean, reward_std = _mean_std([p[2] for p in per_fold])
    return PolicyMetrics(
        apgr=apgr_mean,
        apgr_std=apgr_std,
        apgr_folds=[float(p[0]) for p in per_fold],
        cost_to_match_best=match_mean,
        cost_to_match_best_std=match_std,
        cost_to_match_best_folds=sum(p[1] is not None for p in per_fold),
        reward_at_best_cost=reward_mean,
        reward_at_best_cost_std=reward_std,
    )


def _points(frontiers: list[np.ndarray], lambdas: np.ndarray) -> list[FrontierPoint]:
    mean = np.mean(frontiers, axis=0)
    return [FrontierPoint(**{"lambda": float(l), "cost_usd": float(c), "reward": float(r)}) for l, (c, r) in zip(lambdas, mean)]


def _predictor_quality(qualities: list[dict], backends: list[tuple[str, dict[str, float]]]) -> PredictorQuality:
    summary = {}
    for key in ("spearman", "roc_auc", "brier", "ece", "log_loss"):
        summary[key], summary[f"{key}_std"] = _mean_std([q[key] for q in qualities])
    counts = Counter(b[0] for b in backends)
    cv_names = {name for _, cv in backends for name in cv}
    cv = {name: float(np.mean([b[1][name] for b in backends if name in b[1]])) for name in sorted(cv_names)}
    return PredictorQuality(**summary, backend=counts.most_common(1)[0][0], backend_counts=dict(counts), cv_log_loss=cv)


def simulation_lambdas(data: RoutingDataset, n: int) -> np.ndarray:
    """One lambda sweep for every fold and policy, scaled to the dataset's typical call costs."""
    lengths = np.where(np.isfinite(data.output_tokens), data.output_tokens, np.nanmedian(data.output_tokens))
    return lambda_sweep(call_costs(data.input_tokens, lengths, data.price_matrix), n)


def simulate(data: RoutingDataset, config: SimulationConfig, encoder: Encoder | None = None, progress: bool = True) -> Report:
    """Run the K-fold protocol of ../shared/README.md and return the report."""
    started = time.perf_counter()
    encoder = encoder or Encoder(config.encoder)
    embeddings = encoder.encode(data.texts, progress=progress)
    embedded = time.perf_counter()
    lambdas = simulation_lambdas(data, config.n_lambdas)
    folds: list[Fold] = []
    for train, test in tqdm(fold_splits(data, config.folds, config.seed), desc="folds", disable=not progress):
        folds.append(run_fold(data, embeddings, train, test, lambdas, config))
    refs = [reference_points(f.single[:, 0], f.single[:, 1]) for f in folds]
    single_mean = np.mean([f.single for f in folds], axis=0)
    single_std = np.std([f.single for f in folds], axis=0)
    policies = list(folds[0].frontiers)
    single_frontiers = [f.single for f in folds]
    report = Report(
        dataset=data.source,
        n_prompts=len(data.prompts),
        models=data.models,
        folds=config.folds,
        seed=config.seed,
        encoder=encoder.name,
        backend=config.backend,
        reference=Reference(
            cheapest=data.models[int(np.argmin(single_mean[:, 0]))], best_single=data.models[int(np.argmax(single_mean[:, 1]))]
        ),
        summary=_policy_metrics([f.frontiers[ERP] for f in folds], refs),
        baselines={
            **{p: _policy_metrics([f.frontiers[p] for f in folds], refs) for p in policies if p != ERP},
            "single_models": _policy_metrics(single_frontiers, refs),
        },
        single_models={
            m: SingleModel(cost_usd=single_mean[j, 0], cost_usd_std=single_std[j, 0], reward=single_mean[j, 1], reward_std=single_std[j, 1])
            for j, m in enumerate(data.models)
        },
        predictors={m: _predictor_quality([f.quality[m] for f in folds], [f.backends[m] for f in folds]) for m in data.models},
        frontiers={p: _points([f.frontiers[p] for f in folds], lambdas) for p in policies},
        timing=Timing(embedding_s=embedded - started, folds_s=0.0, total_s=0.0),
    )
    if config.holdout_model:
        report.holdout = Holdout(
            model=config.holdout_model,
            before=_policy_metrics([f.holdout_frontiers["before"] for f in folds], refs),
            after=_policy_metrics([f.holdout_frontiers["after"] for f in folds], refs),
            predictor=_predictor_quality([f.holdout_quality for f in folds], [f.holdout_backend for f in folds]),
            frontiers={k: _points([f.holdout_frontiers[k] for f in folds], lambdas) for k in ("before", "after")},
        )
    finished = time.perf_counter()
    report.timing = Timing(embedding_s=embedded - started, folds_s=finished - embedded, total_s=finished - started)
    return report
