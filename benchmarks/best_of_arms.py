"""Best-of-N arms for routing, built from collected samples: does best-of-N move the cost-accuracy frontier?

    python -m benchmarks.best_of_arms --arms ~/.cache/erp-router/arms/data \
        --samples ~/.cache/erp-router/arms/best-of --model smollm2@direct --out ~/.cache/erp-router/arms/with-best-of
    python -m benchmarks.arms_study --data ~/.cache/erp-router/arms/with-best-of --name arms-smollm2-best-of

Writes a routing dataset: the arms dataset's prompts and outcomes, plus ``MODEL-bestN`` arms for N = 4 and 8
whose outcome on a prompt is the SWIFT (hidden-state) selector's pick among the first N collected samples, at
the summed output tokens of all N (what serving the arm costs). The selector is fitted only on the samples of
prompts outside the arms dataset, so no outcome it predicts was seen in fitting.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from predictors.selector import TokenRewardSelector
from router.registry import load_registry
from router.selector_fitting import answer_features, build_source, candidate_samples


def best_of_outcomes(samples: pd.DataFrame, scores: np.ndarray, prompts: set, model: str, n: int) -> pd.DataFrame:
    """One outcome per prompt in ``prompts``: the best-scored of its first ``n`` samples, costed as all ``n``."""
    rows = []
    for prompt_id, group in samples[samples["prompt_id"].isin(prompts)].groupby("prompt_id"):
        first = group.iloc[:n]
        chosen = first.iloc[int(np.argmax(scores[first.index]))]
        tokens = int(first["output_tokens"].sum())
        rows.append({"prompt_id": prompt_id, "model": f"{model}-best{n}", "sample": 0, "reward": float(chosen["reward"]),
                     "response": chosen["response"], "output_tokens": tokens, "cost_usd": float(first["cost_usd"].sum())})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.best_of_arms", description=__doc__.split("\n")[0])
    parser.add_argument("--arms", type=Path, required=True, help="the arms study's collected dataset")
    parser.add_argument("--samples", type=Path, required=True, help="an `erp collect --samples 8` folder of one arm")
    parser.add_argument("--model", required=True, help="the sampled arm, e.g. smollm2@direct")
    parser.add_argument("--registry", default="benchmarks/local_arms.yaml")
    parser.add_argument("--ns", default="4,8")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    entry = load_registry(args.registry).entry(args.model)
    samples = candidate_samples(args.samples, args.model)
    features = answer_features(build_source("hidden_states", 0), entry, samples)
    prompts = pd.read_parquet(args.arms / "prompts.parquet")
    outcomes = pd.read_parquet(args.arms / "outcomes.parquet")
    prices = pd.read_csv(args.arms / "models.csv")
    routed = set(prompts["prompt_id"]) & set(samples["prompt_id"])
    train = np.flatnonzero(~samples["prompt_id"].isin(routed).to_numpy())
    labels = (samples["reward"].to_numpy() >= 0.5).astype(int)
    selector = TokenRewardSelector(random_state=0).fit([features[i] for i in train], labels[train])
    scores = selector.decision_function(features)
    added = [best_of_outcomes(samples, scores, routed, args.model, int(n)) for n in args.ns.split(",")]
    price = prices[prices["model"] == args.model].iloc[0]
    new_prices = [price.to_dict() | {"model": frame["model"].iloc[0]} for frame in added]
    args.out.mkdir(parents=True, exist_ok=True)
    prompts[prompts["prompt_id"].isin(routed)].to_parquet(args.out / "prompts.parquet", index=False)
    kept = outcomes[outcomes["prompt_id"].isin(routed)]
    pd.concat([kept, *added], ignore_index=True).to_parquet(args.out / "outcomes.parquet", index=False)
    pd.concat([prices, pd.DataFrame(new_prices)], ignore_index=True).to_csv(args.out / "models.csv", index=False)
    print(f"wrote {args.out}: {len(routed)} prompts; selector fitted on {len(train)} samples of other prompts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
