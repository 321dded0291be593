"""Scorer benchmark: accuracy and tokens of a hybrid's fast scorer alone, its slow judge alone, and the hybrid.

Input: a labeled JSONL or parquet file with `prompt`, `response` and `label` (0/1, or a reference score in
[0, 1]); `model` (the pool model that answered, for the ERP check) and `system` are optional, and
`alternative` makes an item pairwise (label 1 = `response` is the better one). Per method:

- coverage: share of items scored (a missing score is never counted as 0),
- accuracy: share of scored items where reward >= 0.5 agrees with label >= 0.5,
- Spearman: rank correlation of reward and label on scored items,
- tokens: judge tokens spent (0 for a local reward model), in total and per item,
- slow share: items the hybrid sent to its slow judge.

`--calibration FILE` (same format; labels unused) first calibrates the hybrid's thresholds to its
`target_slow_fraction` and saves them to its `thresholds` path (a cascade: every stage's, each stage to its
own entry's target on the items that reach it). Each method runs as a user would run it,
so a real run pays the fast scorer twice and the slow judge on every item plus once more on the slow share.

Runnable against the stub upstream with synthetic noisy-oracle judges (numbers show the mechanism only):

    .venv/bin/python tests/stub_judge.py --port 9000 --demo /tmp/scorer-demo &
    ERP_DEMO_JUDGE_KEY=stub .venv/bin/python -m benchmarks.scorer_eval \
        --registry /tmp/scorer-demo/model_registry.yaml --hybrid hybrid \
        --calibration /tmp/scorer-demo/calibration.jsonl --data /tmp/scorer-demo/labeled.jsonl \
        --out /tmp/scorer-demo/results.md

Real numbers need the judges' API keys (e.g. OPENAI_API_KEY) or downloaded reward-model weights.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from predictors.scorers.base import ScoreBatch, ScoringItem
from predictors.scorers.hybrid import HybridScorer


class EvalError(ValueError):
    """Unusable input; the message says which file and the fix."""


@dataclass(frozen=True)
class Row:
    method: str
    scorer: str
    coverage: float
    accuracy: float
    spearman: float
    tokens: int
    tokens_per_item: float
    slow_share: float


def read_items(path: Path, need_labels: bool = True) -> tuple[list[ScoringItem], np.ndarray]:
    """Items and labels (NaN where absent) from JSONL or parquet."""
    if not path.is_file():
        raise EvalError(f"{path} not found; fix: pass a JSONL or parquet file")
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_json(path, lines=True)
    required = ["prompt", "response"] + (["label"] if need_labels else [])
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise EvalError(f"{path} lacks column(s) {', '.join(missing)}; fix: add them")
    labels = frame["label"].to_numpy(dtype=np.float64) if "label" in frame else np.full(len(frame), np.nan)
    if need_labels and not ((labels >= 0) & (labels <= 1)).all():
        raise EvalError(f"{path}: labels must be 0/1 or reference scores in [0, 1]; fix: rescale them")
    columns = ("model", "system", "alternative")
    optional = {column: frame[column] if column in frame else [None] * len(frame) for column in columns}
    items = [
        ScoringItem(str(prompt), str(response), model, system, alternative)
        for prompt, response, model, system, alternative in zip(
            frame["prompt"], frame["response"], *(optional[column] for column in columns), strict=True
        )
    ]
    return items, labels


def evaluate(method: str, scorer: str, batch: ScoreBatch, labels: np.ndarray) -> Row:
    scored = ~np.isnan(batch.rewards)
    rewards, truth = batch.rewards[scored], labels[scored]
    accuracy = float(np.mean((rewards >= 0.5) == (truth >= 0.5))) if scored.any() else np.nan
    spearman = float(spearmanr(rewards, truth).statistic) if scored.sum() > 2 else np.nan
    slow = float(batch.slow.mean()) if batch.slow is not None and method == "hybrid" else 0.0
    n = len(labels)
    return Row(method, scorer, float(scored.mean()), accuracy, spearman, batch.tokens, batch.tokens / n, slow)


async def compare(hybrid: HybridScorer, items: list[ScoringItem], labels: np.ndarray) -> list[Row]:
    """Fast only, slow only and the hybrid on the same labeled items."""
    rows = []
    for method, scorer in (("fast only", hybrid.fast), ("slow only", hybrid.slow), ("hybrid", hybrid)):
        rows.append(evaluate(method, scorer.name, await scorer.score(items), labels))
    return rows


def markdown(rows: list[Row], data: Path, calibration: dict) -> str:
    lines = [
        f"# Scorer evaluation: {data.name} ({calibration['n']} calibration items)",
        "",
        f"Hybrid thresholds: certainty < {calibration['certainty']:.4g}, agreement < {calibration['agreement']} "
        f"(quantile {calibration['quantile']:.3f}; target slow share {calibration['target']:.2f}, "
        f"{calibration['achieved']:.3f} on the calibration set).",
        "",
        "| method | scorer | coverage | accuracy | Spearman | tokens | tokens/item | slow share |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.method} | {r.scorer} | {r.coverage:.3f} | {r.accuracy:.3f} | {r.spearman:.3f} | {r.tokens} "
            f"| {r.tokens_per_item:.1f} | {r.slow_share:.3f} |"
        )
    return "\n".join(lines) + "\n"


async def run(registry_path: Path, name: str, data: Path, calibration_path: Path | None) -> str:
    from router.registry import load_registry
    from router.scorer_config import HybridScorerEntry
    from router.scoring import build_scorer, cascade_targets

    registry = load_registry(registry_path)
    entry = registry.scorer(name)
    if not isinstance(entry, HybridScorerEntry):
        raise EvalError(f"scorer {name!r} is a {entry.kind} scorer; fix: pass --hybrid NAME of a hybrid scorer")
    hybrid = build_scorer(registry, name, require_calibration=calibration_path is None)
    if calibration_path is not None:
        calibration_items, _ = read_items(calibration_path, need_labels=False)
        targets = cascade_targets(registry, name)
        fitted = await hybrid.calibrate(calibration_items, targets[0], targets[1:])
        fitted.save(registry.path_of(entry.thresholds))
    items, labels = read_items(data)
    rows = await compare(hybrid, items, labels)
    fitted = hybrid.calibration_
    summary = {
        "n": fitted.n_items,
        "certainty": fitted.certainty_threshold,
        "agreement": "unused" if fitted.agreement_threshold is None else f"{fitted.agreement_threshold:.4g}",
        "quantile": fitted.quantile,
        "target": fitted.target_slow_fraction,
        "achieved": fitted.calibration_slow_fraction,
    }
    return markdown(rows, data, summary)


def main(argv: list[str] | None = None) -> int:
    from router.registry import RegistryError

    parser = argparse.ArgumentParser(description="Accuracy and tokens of fast-only, slow-only and hybrid scoring.")
    parser.add_argument("--registry", type=Path, default=Path("model_registry.yaml"))
    parser.add_argument("--hybrid", required=True, help="name of a hybrid scorer in the registry")
    parser.add_argument("--data", type=Path, required=True, help="labeled JSONL or parquet")
    parser.add_argument("--calibration", type=Path, help="calibrate the hybrid on this file and save its thresholds")
    parser.add_argument("--out", type=Path, help="markdown file for the table (also printed)")
    args = parser.parse_args(argv)
    try:
        table = asyncio.run(run(args.registry, args.hybrid, args.data, args.calibration))
    except (RegistryError, EvalError) as exc:
        print(f"scorer_eval: error: {exc}", file=sys.stderr)
        return 2
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
