"""Reasoning-budget arms of one real local model: how many output tokens ERP routing saves at equal accuracy.

    python -m benchmarks.arms_study --data ~/.cache/erp-router/arms/data --out benchmarks/results

The data is an ``erp collect`` of ``benchmarks/local_arms.yaml`` (SmolLM2-135M-Instruct at three budgets,
graded by the ``answer`` scorer); its prices count output tokens only (1 USD per million), so a cost times 1e6
is output tokens. Five folds by prompt (stratified by number of steps), the pool fitted on each training part
with the simulator's own code; every policy goes through the same policy function over one lambda sweep:

- ERP (the router), the oracle, kNN (k=50), category best average (the true number of steps, which a live
  request does not carry);
- a length rule: the best average arm per prompt-length quartile of the training prompts;
- each fixed arm, the most expensive arm (highest mean tokens on the training part) and the best fixed arm
  (highest training accuracy).

"Tokens saved at equal accuracy" against a reference point (accuracy a, tokens t) is 1 - t_erp / t, where
t_erp is the fewest mean output tokens at which ERP's fold-averaged frontier reaches accuracy a.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from predictors.dataset import RoutingDataset, load_dataset  # noqa: E402
from predictors.embedding import Encoder  # noqa: E402
from router.simulation import baselines  # noqa: E402
from router.simulation.folds import (  # noqa: E402
    SimulationConfig,
    fit_fold_pool,
    fold_splits,
    predict_fold,
    simulation_lambdas,
)
from router.simulation.metrics import apgr, reference_points  # noqa: E402

POLICIES = ("erp", "oracle", "knn", "category_best_average", "length_rule")


def length_rule(train_chars: np.ndarray, train_rewards: np.ndarray, test_chars: np.ndarray, bins: int = 4) -> np.ndarray:
    """Per arm, its mean training reward within the prompt-length quartile of each test prompt."""
    edges = np.quantile(train_chars, np.linspace(0, 1, bins + 1)[1:-1])
    return baselines.category_best_average(train_rewards, np.digitize(train_chars, edges), np.digitize(test_chars, edges))


def run_folds(data: RoutingDataset, config: SimulationConfig) -> dict:
    """Per policy, the fold-averaged (lambda, tokens, accuracy) frontier; per arm, its mean tokens and accuracy."""
    embeddings = Encoder(config.encoder).encode(data.texts)
    lambdas = simulation_lambdas(data, config.n_lambdas)
    chars = data.prompts["prompt"].str.len().to_numpy()
    per_token = data.price_matrix[:, 1]
    frontiers: dict[str, list[np.ndarray]] = {p: [] for p in POLICIES}
    singles, refs, fixed = [], [], {"most_expensive": [], "best_fixed": []}
    for train, test in fold_splits(data, config.folds, config.seed):
        pool = fit_fold_pool(data, embeddings, train, config)
        estimates, predicted_costs, truth = predict_fold(data, embeddings, pool, test)
        train_rewards = data.rewards[train]
        candidates = {
            "erp": estimates,
            "oracle": truth.rewards,
            "knn": baselines.knn_average(embeddings[train], train_rewards, embeddings[test], config.knn_k),
            "category_best_average": baselines.category_best_average(
                train_rewards, data.categories[train], data.categories[test]
            ),
            "length_rule": length_rule(chars[train], train_rewards, chars[test]),
        }
        for policy, rewards in candidates.items():
            costs = truth.costs if policy == "oracle" else predicted_costs
            frontiers[policy].append(truth.frontier(rewards, costs, lambdas))
        single = np.column_stack([truth.costs.mean(axis=0), truth.rewards.mean(axis=0)])
        singles.append(single)
        refs.append(reference_points(single[:, 0], single[:, 1]))
        train_tokens = np.nanmean(data.output_tokens[train], axis=0)
        fixed["most_expensive"].append(single[int(np.argmax(train_tokens))])
        fixed["best_fixed"].append(single[int(np.argmax(np.nanmean(train_rewards, axis=0)))])
    to_tokens = 1.0 / float(np.mean(per_token))
    return {
        "lambdas": lambdas,
        "frontiers": {p: np.mean(f, axis=0) * [to_tokens, 1.0] for p, f in frontiers.items()},
        "apgr": {p: (float(np.mean(v)), float(np.std(v))) for p, v in _apgr(frontiers, refs).items()},
        "arms": np.mean(singles, axis=0) * [to_tokens, 1.0],
        "fixed": {name: np.mean(points, axis=0) * [to_tokens, 1.0] for name, points in fixed.items()},
    }


def _apgr(frontiers: dict[str, list[np.ndarray]], refs: list) -> dict[str, list[float]]:
    return {p: [apgr(f[:, 0], f[:, 1], r) for f, r in zip(folds, refs)] for p, folds in frontiers.items()}


def tokens_at(frontier: np.ndarray, accuracy: float) -> float | None:
    """The fewest mean tokens at which a (tokens, accuracy) frontier reaches ``accuracy``; None if it never does."""
    reaching = frontier[frontier[:, 1] >= accuracy - 1e-12]
    return float(reaching[:, 0].min()) if len(reaching) else None


def savings(result: dict) -> list[tuple[str, float, float, float | None]]:
    """(reference, its accuracy, its tokens, ERP's tokens saved at that accuracy) for each reference point."""
    erp = result["frontiers"]["erp"]
    length = result["frontiers"]["length_rule"]
    best_length = length[int(np.argmax(length[:, 1]))]
    points = [("most expensive arm", *result["fixed"]["most_expensive"]), ("best fixed arm", *result["fixed"]["best_fixed"]),
              ("length rule at its best accuracy", *best_length)]
    rows = []
    for name, tokens, accuracy in points:
        reached = tokens_at(erp, accuracy)
        rows.append((name, float(accuracy), float(tokens), None if reached is None else 1.0 - reached / tokens))
    return rows


def markdown(result: dict, data: RoutingDataset) -> str:
    lines = ["| arm | accuracy | mean output tokens |", "|---|---|---|"]
    lines += [f"| {m} | {a:.3f} | {t:.1f} |" for m, (t, a) in zip(data.models, result["arms"])]
    lines += ["", "| policy | APGR (mean ± std over folds) |", "|---|---|"]
    lines += [f"| {p} | {m:.3f} ± {s:.3f} |" for p, (m, s) in result["apgr"].items()]
    lines += ["", "| against | its accuracy | its tokens | ERP's tokens saved at that accuracy |", "|---|---|---|---|"]
    lines += [f"| {n} | {a:.3f} | {t:.1f} | {'not reached' if s is None else f'{s:.1%}'} |" for n, a, t, s in savings(result)]
    lines += ["", "| lambda (reward per USD) | ERP accuracy | ERP mean output tokens |", "|---|---|---|"]
    erp = result["frontiers"]["erp"]
    for i in np.linspace(0, len(erp) - 1, 12).astype(int):
        lines.append(f"| {result['lambdas'][i]:.4g} | {erp[i, 1]:.3f} | {erp[i, 0]:.1f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, data: RoutingDataset, path: Path) -> None:
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for policy, frontier in result["frontiers"].items():
        order = np.argsort(frontier[:, 0])
        left.plot(frontier[order, 0], frontier[order, 1], label=policy, marker="." if policy == "erp" else None)
    for model, (tokens, accuracy) in zip(data.models, result["arms"]):
        left.scatter([tokens], [accuracy], marker="s", zorder=3)
        left.annotate(model.split("@")[-1], (tokens, accuracy), textcoords="offset points", xytext=(4, 4))
    left.set(xlabel="mean output tokens per prompt", ylabel="accuracy", title="accuracy against tokens (5 folds)")
    left.legend(fontsize=8)
    erp = result["frontiers"]["erp"]
    accuracy = right.semilogx(result["lambdas"], erp[:, 1], color="tab:blue", label="accuracy")
    right.set(xlabel="lambda (reward per USD; 1 USD = 1M output tokens)", ylabel="accuracy", title="one knob: ERP by lambda")
    twin = right.twinx()
    tokens = twin.semilogx(result["lambdas"], erp[:, 0], color="tab:orange", label="mean output tokens")
    twin.set_ylabel("mean output tokens")
    right.legend(handles=[*accuracy, *tokens], fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--name", default="arms-smollm2", help="file name of the report and plot")
    args = parser.parse_args()
    data = load_dataset(args.data)
    result = run_folds(data, SimulationConfig(seed=args.seed, encoder=args.encoder))
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(result, data)
    (args.out / f"{args.name}.md").write_text(text)
    plot(result, data, args.out / f"{args.name}.png")
    print(text)


if __name__ == "__main__":
    main()
