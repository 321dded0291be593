"""Best-of-N on a real local model: SWIFT selectors (hidden states, logits) against simple ways to pick.

    python -m benchmarks.best_of_study --data DIR --model smollm2@direct --registry benchmarks/local_arms.yaml \
        --out benchmarks/results

DIR is an ``erp collect --samples 8 --logprobs 5`` folder (answers graded 0/1 by the ``answer`` scorer). For
each of ``--seeds`` random splits of the problems (a third held out), the selectors are fitted on the training
problems' samples (``router.selector_fitting``, the code ``erp fit-selector`` runs) and every method picks one
of the first N samples of each held-out problem, N = 1, 2, 4, 8:

- ``swift_hidden`` / ``swift_logits``: the highest SWIFT score (hidden states of the last four layers; per-token
  log-probability features);
- ``first``; ``random`` (the expected accuracy of a uniform pick, exactly); ``majority`` (the most frequent
  extracted answer, ties to the earliest); ``mean_logprob`` (the highest mean token log-probability);
- ``oracle``: right if any of the N is.

Also the learning curve (SWIFT at N = 8 trained on 50, 100, 200 and all training problems) and each selector's
parameters and feature time per answer (hidden-state features are cached by ``router.selector_fitting``, so a
rerun reads them back: the time reported is the first run's only when the cache was empty).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from predictors.scorers.answer import final_answer, normalize, parse_number
from predictors.selector import TokenRewardSelector
from predictors.token_features import LogprobFeatures
from router.registry import load_registry
from router.selector_fitting import answer_features, build_source, candidate_samples

NS = (1, 2, 4, 8)
TRAIN_SIZES = (50, 100, 200)
METHODS = ("swift_hidden", "swift_logits", "first", "random", "majority", "mean_logprob", "oracle")


def timed_features(source, entry, samples: pd.DataFrame) -> tuple[list[np.ndarray], float]:
    """Every sample's features (hidden states come from the cache after the first run) and the seconds per
    answer it took to make them here."""
    started = time.perf_counter()
    features = answer_features(source, entry, samples)
    return features, (time.perf_counter() - started) / len(samples)


def answer_key(response: str) -> str | None:
    """The extracted final answer, as a number where it parses (so '12' and '12.0' vote together)."""
    answer = final_answer(response or "")
    if answer is None:
        return None
    number = parse_number(answer)
    return f"{number:g}" if number is not None else normalize(answer)


def pick_accuracy(method: str, rewards: np.ndarray, keys: list, mean_lp: np.ndarray, scores: dict) -> float:
    """The accuracy of one method on one problem's first N samples (arrays already cut to N)."""
    if method == "oracle":
        return float(rewards.max())
    if method == "random":
        return float(rewards.mean())
    if method == "first":
        return float(rewards[0])
    if method == "majority":
        votes = pd.Series([k for k in keys if k is not None], dtype=object)
        if votes.empty:
            return float(rewards[0])
        counts = votes.value_counts(sort=False)
        winner = counts.index[int(np.argmax(counts.to_numpy()))]
        return float(rewards[keys.index(winner)])
    choice = np.argmax(mean_lp if method == "mean_logprob" else scores[method])
    return float(rewards[int(choice)])


def fit_scores(features: list[np.ndarray], labels: np.ndarray, train_rows: np.ndarray, seed: int) -> tuple[np.ndarray, TokenRewardSelector]:
    """A selector fitted on ``train_rows``; the scores of every sample."""
    selector = TokenRewardSelector(random_state=seed).fit([features[i] for i in train_rows], labels[train_rows])
    return selector.decision_function(features), selector


def evaluate_split(samples: pd.DataFrame, feats: dict, seed: int, train_problems: int | None) -> list[dict]:
    """Accuracy per (method, N) on the held-out third of the problems of one seed's split."""
    rng = np.random.default_rng(seed)
    problems = samples["prompt_id"].unique()
    order = rng.permutation(problems)
    test = set(order[: len(order) // 3])
    train_pool = order[len(order) // 3 :]
    train = set(train_pool if train_problems is None else train_pool[:train_problems])
    labels = (samples["reward"].to_numpy() >= 0.5).astype(int)
    train_rows = np.flatnonzero(samples["prompt_id"].isin(train).to_numpy())
    scores = {f"swift_{kind}": fit_scores(feats[kind], labels, train_rows, seed)[0] for kind in feats}
    mean_lp = np.array([f[:, 0].mean() for f in feats["logits"]])
    rows = []
    for prompt_id, group in samples[samples["prompt_id"].isin(test)].groupby("prompt_id"):
        index = group.index.to_numpy()
        keys = [answer_key(text) for text in group["response"]]
        for n in NS:
            cut = index[:n]
            per = {m: scores[m][cut] for m in scores}
            for method in METHODS if train_problems is None else ("swift_hidden", "swift_logits"):
                accuracy = pick_accuracy(method, labels[cut], keys[:n], mean_lp[cut], per)
                rows.append({"seed": seed, "train": train_problems or len(train), "method": method, "N": n,
                             "prompt_id": prompt_id, "accuracy": accuracy})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.best_of_study", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True, help="the candidate whose samples to use, e.g. smollm2@direct")
    parser.add_argument("--registry", default="benchmarks/local_arms.yaml")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--name", default="best-of-smollm2", help="file name of the report")
    args = parser.parse_args(argv)
    entry = load_registry(args.registry).entry(args.model)
    samples = candidate_samples(Path(args.data), args.model)
    hidden, hidden_seconds = timed_features(build_source("hidden_states", 0), entry, samples)
    logits, logit_seconds = timed_features(LogprobFeatures(top_k=5), entry, samples)
    feats = {"hidden": hidden, "logits": logits}
    rows = []
    for seed in range(args.seeds):
        rows += evaluate_split(samples, feats, seed, None)
        for size in TRAIN_SIZES:
            if size < samples["prompt_id"].nunique() * 2 // 3:
                rows += evaluate_split(samples, feats, seed, size)
    results = pd.DataFrame(rows)
    report = write_report(results, samples, feats, {"hidden": hidden_seconds, "logits": logit_seconds}, args)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"{args.name}.md").write_text(report)
    print(report)
    return 0


def write_report(results: pd.DataFrame, samples: pd.DataFrame, feats: dict, seconds: dict, args) -> str:
    """Markdown: accuracy by method and N (mean over seeds, per-seed in brackets), paired gaps, learning curve."""
    full = results[results["train"] == results.groupby("seed")["train"].transform("max")]
    per_seed = full.groupby(["method", "N", "seed"])["accuracy"].mean().unstack("seed")
    lines = [f"# Best-of-N on {args.model} ({samples['prompt_id'].nunique()} problems, {len(samples)} samples)", ""]
    lines += ["| method | " + " | ".join(f"N={n}" for n in NS) + " |", "|---|" + "---:|" * len(NS)]
    for method in METHODS:
        cells = []
        for n in NS:
            values = per_seed.loc[(method, n)].to_numpy()
            cells.append(f"{values.mean():.3f} ({', '.join(f'{v:.3f}' for v in values)})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "Paired gaps at N=8 (per seed):", ""]
    for other in ("majority", "mean_logprob", "first"):
        for kind in ("swift_hidden", "swift_logits"):
            gap = per_seed.loc[(kind, 8)] - per_seed.loc[(other, 8)]
            lines.append(f"- {kind} - {other}: mean {gap.mean():+.3f}, per seed {', '.join(f'{g:+.3f}' for g in gap)}")
    curve = results[results["N"] == 8].groupby(["method", "train", "seed"])["accuracy"].mean().groupby(["method", "train"]).mean()
    lines += ["", "Learning curve at N=8 (mean over seeds; training problems):", "", "| selector | " +
              " | ".join(str(t) for t in sorted(results["train"].unique())) + " |", "|---|" + "---:|" * results["train"].nunique()]
    for kind in ("swift_hidden", "swift_logits"):
        lines.append(f"| {kind} | " + " | ".join(f"{curve.loc[(kind, t)]:.3f}" for t in sorted(results["train"].unique())) + " |")
    lines += ["", "| selector | parameters | feature time per answer |", "|---|---:|---:|"]
    for kind in ("hidden", "logits"):
        width = feats[kind][0].shape[1]
        lines.append(f"| swift_{kind} | {2 * width + 2} | {seconds[kind] * 1000:.2f} ms |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
