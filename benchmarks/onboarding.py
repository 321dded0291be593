"""Learning curve of adding a model from n of its labels: APGR against the joint fit and the pool without it.

    python -m benchmarks.onboarding --data ../shared/data/zeroeval \\
        --models o1-mini-2024-09-12,claude-3-5-sonnet-20241022,gemma-2-2b-it \\
        --out benchmarks/results/onboarding-zeroeval.md

Per seed and fold (``erp simulate``'s stratified folds, lambda sweep, policy and APGR, from
``router.simulation``): the pool fitted jointly with every model (``erp simulate``'s ERP); per held-out
model, the pool fitted without it (routing never picks it); and that pool after ``PoolPredictor.add_model``
(``erp fit --model``'s recipe, and ``erp simulate --holdout-model``'s) from n of the model's training prompts,
drawn at random and nested (the first n of one permutation per seed, fold and model), with the pool prior
and without it (``borrow_from_pool=False``: its own predictor alone). The table is rewritten after every seed.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from predictors.dataset import RoutingDataset, load_dataset
from predictors.embedding import Encoder
from predictors.onboarding import OnboardedModelPredictor
from predictors.reward import weighted_log_loss
from predictors.training import TrainingSet
from router.policy import call_costs
from router.simulation.folds import (
    SimulationConfig,
    TestSet,
    fit_fold_pool,
    fold_splits,
    predict_fold,
    simulation_lambdas,
)
from router.simulation.metrics import ReferencePoints, apgr, reference_points

ALL = "all"
VARIANTS = {"prior": True, "own only": False}  # label -> add_model's borrow_from_pool


def _apgr(
    truth: TestSet, estimates: np.ndarray, costs: np.ndarray, lambdas: np.ndarray, refs: ReferencePoints, allowed=None
) -> float:
    frontier = truth.frontier(estimates, costs, lambdas, allowed)
    return apgr(frontier[:, 0], frontier[:, 1], refs)


class Results:
    """Per (variant, model, n): each fold's APGR, the added model's test log-loss and its own predictor's weight."""

    def __init__(self) -> None:
        self.rows: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        self.n_train = 0

    def __getitem__(self, key: tuple) -> dict[str, list]:
        return self.rows[key]

    def record(self, variant: str, model: str | None, n, value: float, loss: float | None = None, weight: float | None = None) -> None:
        entry = self.rows[(variant, model, n)]
        entry["apgr"].append(value), entry["log_loss"].append(loss), entry["weight"].append(weight)
        detail = f" log-loss {loss:.4f} own weight {weight}" if loss is not None else ""
        print(f"{variant:9s} {model or '':32s} n={n}: APGR {value:.4f}{detail}", flush=True)


def _fold(
    data: RoutingDataset,
    embeddings: np.ndarray,
    split: tuple[int, np.ndarray, np.ndarray],
    lambdas: np.ndarray,
    config: SimulationConfig,
    models: list[str],
    sizes: list,
    results: Results,
) -> None:
    """Measure one fold: the joint pool, then per held-out model the pool without it and its learning curve."""
    fold, train, test = split
    results.n_train = len(train)
    joint = fit_fold_pool(data, embeddings, train, config)
    estimates, costs, truth = predict_fold(data, embeddings, joint, test)
    refs = reference_points(truth.costs.mean(axis=0), truth.rewards.mean(axis=0))
    results.record("joint", None, None, _apgr(truth, estimates, costs, lambdas, refs))
    input_tokens = data.input_tokens[test]
    for model in models:
        j = data.models.index(model)
        without = np.arange(len(data.models)) != j
        pool = fit_fold_pool(data, embeddings, train, config, [m for m in data.models if m != model])
        rewards, tokens = pool.predict(embeddings[test], input_tokens, [m for m in data.models if m != model])
        estimates[:, without], costs[:, without] = rewards, call_costs(input_tokens, tokens, data.price_matrix[without])
        results.record("without", model, None, _apgr(truth, estimates, costs, lambdas, refs, without))
        order = np.random.default_rng([config.seed, fold, j]).permutation(train)
        for n in sizes:
            rows = order if n == ALL else order[:n]
            for variant, borrow in VARIANTS.items():
                pool.add_model(model, TrainingSet.from_dataset(data, embeddings, rows), borrow_from_pool=borrow)
                reward, token = pool.predict(embeddings[test], input_tokens, [model])
                estimates[:, j], costs[:, j] = reward[:, 0], call_costs(input_tokens, token, data.price_matrix[[j]])[:, 0]
                loss = weighted_log_loss(truth.rewards[:, j], reward[:, 0], data.sample_counts[test][:, j])
                predictor = pool.model_predictors_[model]
                weight = predictor.own_weight_ if isinstance(predictor, OnboardedModelPredictor) else None
                results.record(variant, model, n, _apgr(truth, estimates, costs, lambdas, refs), loss, weight)


def _mean_std(values) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def _table(results: Results, models: list[str], sizes: list) -> list[str]:
    joint = np.array(results[("joint", None, None)]["apgr"])
    lines = [
        f"Joint fit (every model in the featurizer and with all its training labels): APGR {_mean_std(joint)} "
        f"over {len(joint)} folds.",
        "",
    ]
    for model in models:
        base = np.array(results[("without", model, None)]["apgr"])
        lines += [
            f"### {model}",
            "",
            f"Pool without it: APGR {_mean_std(base)}; joint minus without, paired: {_mean_std(joint - base)}.",
            "",
            "| n labels | with the pool prior: APGR | minus joint, paired (folds within 0.01) | its test log-loss "
            "| own predictor's weight | own predictor only: APGR | minus joint, paired | its test log-loss |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for n in sizes:
            prior, own = results[("prior", model, n)], results[("own only", model, n)]
            gap, gap_own = np.array(prior["apgr"]) - joint, np.array(own["apgr"]) - joint
            label = f"all (~{results.n_train})" if n == ALL else str(n)
            lines.append(
                f"| {label} | {_mean_std(prior['apgr'])} | {gap.mean():+.4f} ± {gap.std():.4f} ({int((gap >= -0.01).sum())}/{len(gap)}) "
                f"| {np.mean(prior['log_loss']):.4f} | {np.mean(prior['weight']):.2f} | {_mean_std(own['apgr'])} "
                f"| {gap_own.mean():+.4f} ± {gap_own.std():.4f} | {np.mean(own['log_loss']):.4f} |"
            )
        lines.append("")
    return lines


def _write(args: argparse.Namespace, data: RoutingDataset, models: list[str], sizes: list, results: Results, done: str, seconds: float) -> None:
    """Rewrite the results file with what has been measured so far."""
    command = (
        f"python -m benchmarks.onboarding --data {args.data} --models {args.models} --seeds {args.seeds} "
        f"--folds {args.folds} --sizes {args.sizes} --out {args.out}" + (f" --max-folds {args.max_folds}" if args.max_folds else "")
    )
    header = [
        f"# Onboarding a model from n labels: {Path(args.data).name}",
        "",
        f"{len(data.prompts)} prompts, {len(data.models)} models, encoder `{args.encoder}`, backend `auto`; the first "
        f"{args.max_folds or args.folds} of {args.folds} folds of each seed's split; done: {done}; {seconds:.0f} s. "
        "Mean ± std over folds; \"paired\" is the per-fold difference.",
        "",
        f"Command: `{command}`",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(header + _table(results, models, sizes)) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--models", required=True, help="comma-separated held-out models")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--folds", type=int, default=5, help="the split: K folds, as erp simulate --folds")
    parser.add_argument("--max-folds", type=int, help="measure only the first this many folds of each seed's split")
    parser.add_argument("--sizes", default="25,50,100,200,400,all")
    parser.add_argument("--encoder", default="minilm")
    args = parser.parse_args()
    data = load_dataset(args.data)
    models = args.models.split(",")
    sizes = [s if s == ALL else int(s) for s in args.sizes.split(",")]
    embeddings = Encoder(args.encoder).encode(data.texts, progress=False)
    lambdas = simulation_lambdas(data, SimulationConfig().n_lambdas)
    results = Results()
    started, seeds = time.perf_counter(), [int(s) for s in args.seeds.split(",")]
    for done, seed in enumerate(seeds, start=1):
        config = SimulationConfig(folds=args.folds, seed=seed, encoder=args.encoder)
        for fold, (train, test) in enumerate(fold_splits(data, args.folds, seed)[: args.max_folds]):
            print(f"seed {seed} fold {fold} ({time.perf_counter() - started:.0f} s)", flush=True)
            _fold(data, embeddings, (fold, train, test), lambdas, config, models, sizes, results)
            _write(args, data, models, sizes, results, f"seeds {', '.join(map(str, seeds[:done]))} (of {args.seeds}), "
                   f"fold {fold + 1} of the last", time.perf_counter() - started)


if __name__ == "__main__":
    main()
