"""Share of a py-spy profile's samples per stage of a simulation: where `make run`'s time goes, cheaply.

    py-spy record --pid PID --subprocesses --duration 150 --rate 20 --format raw -o profile.txt
    python -m benchmarks.profile_stages profile.txt

py-spy samples the running `erp simulate` and its joblib workers without slowing them (unlike cProfile, whose
per-call timer multiplied one mmlu-pro fold's time many times over). A sample counts toward every stage whose
function is on its stack, so nested stages overlap (LightGBM fits happen inside the selection CV, the heads and the
length heads).
"""

from __future__ import annotations

import argparse
from collections import Counter

STAGES: dict[str, str] = {  # label -> text that marks the stage's frames in a collapsed stack
    "featurizer networks and k-means (members)": "_fit_member",
    "backend selection cross-validation": "_cross_validate",
    "linear head fits": "LinearRewardHead.fit",
    "MLP head fits": "MLPRewardHead.fit",
    "LightGBM fits (reward and length heads)": "lightgbm",
    "output-length heads": "predictors/length.py",
    "combination weights": "_fit_combination",
    "predicted-category classifier (baseline)": "predicted_category_best_average",
    "nearest neighbours": "predictors/neighbors.py",
    "policy frontiers": "frontier (router/simulation/folds.py",
}


def stage_shares(lines: list[str]) -> tuple[int, dict[str, float]]:
    """Total samples and each stage's share of them, from py-spy's raw (collapsed-stack) lines."""
    counts: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack:
            continue
        total += int(count)
        for label, marker in STAGES.items():
            if marker in stack:
                counts[label] += int(count)
    return total, {label: counts[label] / max(total, 1) for label in STAGES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profiles", nargs="+", help="py-spy --format raw outputs")
    args = parser.parse_args()
    for path in args.profiles:
        with open(path) as handle:
            total, shares = stage_shares(handle.readlines())
        print(f"{path}: {total} samples")
        for label, share in shares.items():
            print(f"  {label}: {share:.0%}")


if __name__ == "__main__":
    main()
