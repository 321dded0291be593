"""The markdown of a simulation report: the policy table, the predictor table, and results.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from router.simulation.report import PolicyMetrics, Report


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
