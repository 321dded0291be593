"""ERP's expected rewards blended with simpler estimates, over several seeds: the ablation behind the predictor.

    python -m benchmarks.blends --data ../shared/data/mmlu-pro --out benchmarks/results/blends-mmlu-pro.md

The issue's quick trial (one 80/20 split) found an equal-weight blend of a text-to-category
mixture, per-model heads and kNN best on mmlu-pro. This measures that blend and its parts
against ERP alone on the same folds, with the same fitted pool and the same policy. It runs
several seeds because the cost to match the best model moves by more than 0.05 between seeds.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from benchmarks import baselines
from benchmarks.metrics import apgr, cost_to_match_best, reference_points
from benchmarks.simulate import SimulationConfig, fit_fold_pool, fold_splits, predict_fold, simulation_lambdas
from predictors.dataset import RoutingDataset, load_dataset
from predictors.embedding import Encoder
from predictors.pool import PoolPredictor

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VARIANTS = ("ERP", "ERP + category mixture", "ERP + kNN", "ERP + category mixture + kNN")


def category_mixture(data: RoutingDataset, pool: PoolPredictor, embeddings: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """sum_c P(c | text) * mean training reward of each model in category c, with the featurizer's text classifier."""
    featurizer = pool.featurizer
    if not featurizer.n_categories_:  # a single category: its mean is the global mean
        return baselines.global_best_average(data.rewards[train], len(test))
    probabilities = featurizer.category_probabilities(embeddings[test])
    means = baselines.category_best_average(data.rewards[train], data.categories[train], featurizer.categories_)
    return probabilities @ means


def fold_metrics(data: RoutingDataset, embeddings: np.ndarray, train: np.ndarray, test: np.ndarray, lambdas: np.ndarray, config: SimulationConfig) -> dict[str, tuple[float, float | None]]:
    """(APGR, cost to match best) of every variant on one fold."""
    pool = fit_fold_pool(data, embeddings, train, list(range(len(data.models))), config)
    erp, predicted_costs, truth = predict_fold(data, embeddings, pool, test)
    mixture = category_mixture(data, pool, embeddings, train, test)
    knn = baselines.knn_average(embeddings[train], data.rewards[train], embeddings[test], SimulationConfig.knn_k)
    estimates = dict(zip(VARIANTS, (erp, (erp + mixture) / 2, (erp + knn) / 2, (erp + mixture + knn) / 3)))
    reference = reference_points(truth.costs.mean(axis=0), truth.rewards.mean(axis=0))
    metrics = {}
    for name, estimate in estimates.items():
        frontier = truth.frontier(estimate, predicted_costs, lambdas)
        metrics[name] = (apgr(frontier[:, 0], frontier[:, 1], reference), cost_to_match_best(frontier[:, 0], frontier[:, 1], reference))
    return metrics


def _cell(per_fold: list[tuple[float, float | None]]) -> str:
    apgrs = [a for a, _ in per_fold]
    matched = [c for _, c in per_fold if c is not None]
    match = f"{np.mean(matched):.3f} ({len(matched)}/{len(per_fold)})" if matched else "never"
    return f"{np.mean(apgrs):.3f} / {match}"


def table(results: dict[int, list[dict[str, tuple[float, float | None]]]]) -> list[str]:
    """Per seed and pooled: mean APGR / cost to match; paired APGR gain over ERP alone on every fold."""
    seeds = list(results)
    lines = [
        "| estimate | " + " | ".join(f"seed {s}: APGR / cost to match" for s in seeds) + " | all folds: APGR / cost to match | APGR minus ERP's, paired (folds ahead) |",
        "|---|" + "---|" * (len(seeds) + 2),
    ]
    for name in VARIANTS:
        per_seed = [[fold[name] for fold in results[s]] for s in seeds]
        pooled = [m for folds in per_seed for m in folds]
        gains = np.array([fold[name][0] - fold["ERP"][0] for s in seeds for fold in results[s]])
        gain = "-" if name == "ERP" else f"{gains.mean():+.4f} ± {gains.std():.4f} ({int((gains > 0).sum())}/{len(gains)})"
        lines.append(f"| {name} | " + " | ".join(_cell(f) for f in per_seed) + f" | {_cell(pooled)} | {gain} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--members", type=int, default=SimulationConfig.n_members, help="featurizer members to bag")
    args = parser.parse_args()
    data = load_dataset(args.data)
    embeddings = Encoder("minilm").encode(data.texts, progress=True)
    lambdas = simulation_lambdas(data, SimulationConfig.n_lambdas)
    results = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        splits = fold_splits(data, args.folds, seed)
        config = SimulationConfig(seed=seed, n_members=args.members)
        results[seed] = [fold_metrics(data, embeddings, tr, te, lambdas, config) for tr, te in tqdm(splits, desc=f"seed {seed}")]
    lines = [
        f"# {Path(args.data).name}: ERP blended with simpler estimates, {args.folds}-fold CV, seeds {args.seeds}",
        "",
        f"Encoder minilm, backend auto, {args.members} featurizer members; equal-weight means of expected rewards. Cost to match is the mean over the folds"
        " that reach the best single model's reward (how many in brackets).",
        "",
        *table(results),
        "",
        f"Command: `python -m benchmarks.blends --data {args.data} --out {args.out} --seeds {args.seeds} --members {args.members}`",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
