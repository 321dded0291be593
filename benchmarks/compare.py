"""Compare reward backends and prompt encoders by cross-validated APGR and log-loss.

    python -m benchmarks.compare --data ../shared/data/mmlu-pro --out benchmarks/results/compare-mmlu-pro.md

Every row is a full K-fold simulation (same folds, same seed); the table is what
picks the defaults, not guesswork.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from predictors.dataset import load_dataset
from predictors.embedding import Encoder
from router.simulation.folds import SimulationConfig
from router.simulation.summary import simulate

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _row(label: str, report) -> str:
    s = report.summary
    cat = report.baselines["category_best_average"]
    log_loss = np.mean([p.log_loss for p in report.predictors.values()])
    spearman = np.mean([p.spearman for p in report.predictors.values() if p.spearman is not None])
    match = "never" if s.cost_to_match_best is None else f"{s.cost_to_match_best:.3f} ({s.cost_to_match_best_folds}/{report.folds})"
    return (
        f"| {label} | {s.apgr:.3f} ± {s.apgr_std:.3f} | {s.apgr - cat.apgr:+.3f} | {match} | "
        f"{log_loss:.4f} | {spearman:.3f} | {report.timing.folds_s:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backends", default="linear,mlp,lightgbm,blend,auto")
    parser.add_argument("--encoders", default="minilm,minilm-static,minilm+static")
    parser.add_argument("--encoder-backend", default="linear", help="backend used for the encoder comparison")
    args = parser.parse_args()
    data = load_dataset(args.data)
    header = [
        "| configuration | ERP APGR | vs category best average | cost to match best (folds) | mean log-loss | mean Spearman | folds time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines = [f"# {Path(args.data).name}: backends and encoders, {args.folds}-fold CV, seed {args.seed}", ""]
    lines += ["## Reward backends (encoder minilm)", "", *header]
    encoder = Encoder("minilm")
    for backend in filter(None, args.backends.split(",")):
        report = simulate(data, SimulationConfig(args.folds, args.seed, backend, "minilm"), encoder, progress=False)
        lines.append(_row(f"`{backend}`", report))
        print(lines[-1], flush=True)
    lines += ["", f"## Encoders (backend {args.encoder_backend})", "", *header]
    for name in filter(None, args.encoders.split(",")):
        config = SimulationConfig(args.folds, args.seed, args.encoder_backend, name)
        report = simulate(data, config, Encoder(name), progress=False)
        lines.append(_row(f"`{name}`", report))
        print(lines[-1], flush=True)
    lines += ["", f"Command: `python -m benchmarks.compare --data {args.data} --out {args.out}`", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))


if __name__ == "__main__":
    main()
