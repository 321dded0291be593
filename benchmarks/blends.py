"""Which estimates to average into ERP's expected reward, over several seeds: the ablation behind the predictor.

    python -m benchmarks.blends --data ../shared/data/mmlu-pro --out benchmarks/results/blends-mmlu-pro.md

Each model's expected reward is the mean of its heads, its category mixture, its source
mixture (where the data's sources refine its categories) and its nearest-neighbour estimate
(``ModelPredictor.predict_parts``). The issue's quick trial (one 80/20 split) found the
blend of heads, category mixture and kNN best on mmlu-pro; this measures the shipped mean
and its subsets on the same folds, with the same fitted pool and the same policy. It runs
several seeds because the cost to match the best model moves by more than 0.05 between seeds.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from predictors.dataset import RoutingDataset, load_dataset
from predictors.embedding import Encoder
from router.simulation.folds import SimulationConfig, fit_fold_pool, fold_splits, predict_fold, simulation_lambdas
from router.simulation.metrics import apgr, cost_to_match_best, reference_points

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ERP = "ERP = heads + category mixture + source mixture + kNN"
VARIANTS: dict[str, tuple[str, ...]] = {
    ERP: ("heads", "category", "source", "neighbors"),
    "heads + category mixture + kNN": ("heads", "category", "neighbors"),
    "heads": ("heads",),
    "heads + category mixture": ("heads", "category"),
    "heads + kNN": ("heads", "neighbors"),
}


def fold_metrics(data: RoutingDataset, embeddings: np.ndarray, train: np.ndarray, test: np.ndarray, lambdas: np.ndarray, config: SimulationConfig) -> dict[str, tuple[float, float | None]]:
    """(APGR, cost to match best) of every variant on one fold."""
    pool = fit_fold_pool(data, embeddings, train, config)
    erp, predicted_costs, truth = predict_fold(data, embeddings, pool, test)
    parts = pool.predict_parts(embeddings[test], data.input_tokens[test], data.models)
    estimates = {name: np.nanmean([parts[p] for p in needed if p in parts], axis=0) for name, needed in VARIANTS.items()}
    estimates[ERP] = erp  # what the simulation and the router use
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
    """Per seed and pooled: mean APGR / cost to match; paired APGR difference from ERP on every fold."""
    seeds = list(results)
    lines = [
        "| estimate | " + " | ".join(f"seed {s}: APGR / cost to match" for s in seeds) + " | all folds: APGR / cost to match | APGR minus ERP's, paired (folds ahead) |",
        "|---|" + "---|" * (len(seeds) + 2),
    ]
    for name in VARIANTS:
        per_seed = [[fold[name] for fold in results[s]] for s in seeds]
        pooled = [m for folds in per_seed for m in folds]
        gains = np.array([fold[name][0] - fold[ERP][0] for s in seeds for fold in results[s]])
        gain = "-" if name == ERP else f"{gains.mean():+.4f} ± {gains.std():.4f} ({int((gains > 0).sum())}/{len(gains)})"
        lines.append(f"| {name} | " + " | ".join(_cell(f) for f in per_seed) + f" | {_cell(pooled)} | {gain} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--members", type=int, default=SimulationConfig.n_members, help="featurizer members to bag")
    parser.add_argument("--backend", default=SimulationConfig.backend, help="reward head backend (auto, linear, mlp, lightgbm, blend)")
    args = parser.parse_args()
    data = load_dataset(args.data)
    embeddings = Encoder("minilm").encode(data.texts, progress=True)
    lambdas = simulation_lambdas(data, SimulationConfig.n_lambdas)
    results = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        splits = fold_splits(data, args.folds, seed)
        config = SimulationConfig(seed=seed, backend=args.backend, n_members=args.members)
        results[seed] = [fold_metrics(data, embeddings, tr, te, lambdas, config) for tr, te in tqdm(splits, desc=f"seed {seed}")]
    lines = [
        f"# {Path(args.data).name}: the parts of ERP's expected reward, {args.folds}-fold CV, seeds {args.seeds}",
        "",
        f"Encoder minilm, backend {args.backend}, {args.members} featurizer members; equal-weight means of expected rewards. Cost to match is the mean over the folds"
        " that reach the best single model's reward (how many in brackets).",
        "",
        *table(results),
        "",
        f"Command: `python -m benchmarks.blends --data {args.data} --out {args.out} --seeds {args.seeds} --members {args.members} --backend {args.backend}`",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
