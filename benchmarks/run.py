"""``erp simulate``: validate inputs, run the simulation, print the table, write report.json, results.md and the plot.

Outputs are staged in a temporary folder and moved into --out only when complete.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.plots import plot_frontiers
from benchmarks.report import PolicyMetrics, Report
from benchmarks.simulate import SimulationConfig, simulate
from predictors.dataset import DatasetError, load_dataset

OUTPUT_FILES = ("report.json", "results.md", "frontier.png")


def _fmt(value: float | None, std: float | None = None, digits: int = 3) -> str:
    if value is None:
        return "never"
    return f"{value:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{value:.{digits}f}"


def _paired_gap(erp: PolicyMetrics, other: PolicyMetrics) -> str:
    """Fold-by-fold difference: folds share test prompts, so this is far less noisy than comparing two means."""
    if other is erp:
        return "-"
    gaps = np.subtract(erp.apgr_folds, other.apgr_folds)
    return f"{gaps.mean():+.3f} ± {gaps.std():.3f} ({int((gaps > 0).sum())}/{len(gaps)})"


def results_table(report: Report) -> str:
    """Markdown table: one row per policy, sorted by APGR."""
    rows: list[tuple[str, PolicyMetrics]] = [("**ERP**", report.summary), *report.baselines.items()]
    rows.sort(key=lambda row: -row[1].apgr)
    lines = [
        "| policy | APGR | ERP minus this, paired (folds ERP ahead) | cost to match best single | "
        "reward at best single's cost |",
        "|---|---|---|---|---|",
    ]
    for name, m in rows:
        match = _fmt(m.cost_to_match_best, m.cost_to_match_best_std)
        if m.cost_to_match_best is not None and m.cost_to_match_best_folds < report.folds:
            match += f" ({m.cost_to_match_best_folds}/{report.folds} folds)"
        lines.append(
            f"| {name} | {_fmt(m.apgr, m.apgr_std)} | {_paired_gap(report.summary, m)} | {match} | "
            f"{_fmt(m.reward_at_best_cost, m.reward_at_best_cost_std)} |"
        )
    return "\n".join(lines)


def predictor_table(report: Report) -> str:
    lines = [
        "| model | backend (folds) | Spearman | ROC AUC | Brier | ECE | log-loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, q in report.predictors.items():
        counts = ", ".join(f"{k} {v}" for k, v in sorted(q.backend_counts.items()))
        lines.append(
            f"| {model} | {counts} | {_fmt(q.spearman, q.spearman_std)} | {_fmt(q.roc_auc, q.roc_auc_std)} | "
            f"{_fmt(q.brier)} | {_fmt(q.ece)} | {_fmt(q.log_loss)} |"
        )
    return "\n".join(lines)


def results_markdown(report: Report) -> str:
    ref = report.reference
    parts = [
        f"# {Path(report.dataset).name}: {report.folds}-fold routing simulation (seed {report.seed})",
        f"{report.n_prompts} prompts, {len(report.models)} models, encoder `{report.encoder}`, backend `{report.backend}`. "
        f"Cheapest: {ref.cheapest}; best single: {ref.best_single}. Mean ± std over folds.",
        results_table(report),
    ]
    if report.holdout:
        h = report.holdout
        parts.append(
            f"Held-out model **{h.model}**: APGR before {_fmt(h.before.apgr, h.before.apgr_std)}, "
            f"after adding it with one head fit {_fmt(h.after.apgr, h.after.apgr_std)}; "
            f"its predictor's Spearman {_fmt(h.predictor.spearman, h.predictor.spearman_std)}."
        )
    parts.append(predictor_table(report))
    parts.append(
        f"Time: embedding {report.timing.embedding_s:.1f} s, folds {report.timing.folds_s:.1f} s, "
        f"total {report.timing.total_s:.1f} s."
    )
    return "\n\n".join(parts) + "\n"


def _prepare_out(out: Path) -> Path:
    """Fail before any work if --out cannot be written; return a staging folder beside it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=out, prefix=".staging-"))
    except OSError as exc:
        raise DatasetError(f"--out {out}: cannot write there ({exc.strerror}); choose a writable folder") from None


def run_simulate(args: argparse.Namespace) -> Report:
    if args.folds < 2:
        raise DatasetError(f"--folds {args.folds}: need at least 2 folds")
    data = load_dataset(args.data)
    if args.holdout_model and args.holdout_model not in data.models:
        raise DatasetError(
            f"--holdout-model {args.holdout_model!r} is not a model of {args.data}; choose one of: {', '.join(data.models)}"
        )
    smallest = min(data.prompts["category"].value_counts().min(), len(data.prompts))
    if len(data.prompts) < 2 * args.folds:
        raise DatasetError(f"{args.data}: {len(data.prompts)} prompts are too few for {args.folds} folds (smallest category: {smallest})")
    out = Path(args.out)
    created = not out.exists()
    staging = _prepare_out(out)
    try:
        config = SimulationConfig(
            folds=args.folds, seed=args.seed, backend=args.backend, encoder=args.encoder, holdout_model=args.holdout_model
        )
        report = simulate(data, config)
        (staging / "report.json").write_text(report.model_dump_json(indent=2, by_alias=True))
        (staging / "results.md").write_text(results_markdown(report))
        plot_frontiers(report, staging / "frontier.png")
        for name in OUTPUT_FILES:
            (staging / name).replace(out / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    print(results_markdown(report))
    print(f"wrote {', '.join(str(out / n) for n in OUTPUT_FILES)}")
    return report
