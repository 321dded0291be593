"""Cost-reward frontier plot of a simulation report."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from router.simulation.report import FrontierPoint, Report  # noqa: E402

STYLES = {
    "erp": dict(color="tab:red", linewidth=2.5, label="ERP (ours)"),
    "oracle": dict(color="black", linestyle=":", label="oracle"),
    "category_best_average": dict(color="tab:blue", label="category best average"),
    "predicted_category_best_average": dict(color="tab:cyan", label="predicted-category best average"),
    "global_best_average": dict(color="tab:green", label="global best average"),
    "knn": dict(color="tab:purple", label="kNN (k=50)"),
    "random_mix": dict(color="tab:gray", linestyle="--", label="random mix"),
    "before": dict(color="tab:orange", linestyle="--", label="ERP without the held-out model"),
    "after": dict(color="tab:red", linewidth=2.5, label="ERP after adding it (one head fit)"),
}


def _draw(ax, name: str, points: list[FrontierPoint]) -> None:
    ordered = sorted(points, key=lambda p: p.cost_usd)
    ax.plot([p.cost_usd for p in ordered], [p.reward for p in ordered], **STYLES.get(name, dict(label=name)))


def plot_frontiers(report: Report, path: Path) -> None:
    """Left: every frontier on a log cost axis. Right: the APGR window (cheapest to best single, linear axis)."""
    cheapest = report.single_models[report.reference.cheapest]
    best = report.single_models[report.reference.best_single]
    panels = [("all policies", report.frontiers, True), ("APGR window", report.frontiers, False)]
    if report.holdout:
        panels.append((f"adding {report.holdout.model}", report.holdout.frontiers, False))
    fig, axes = plt.subplots(1, len(panels), figsize=(8 * len(panels), 6), squeeze=False)
    for ax, (title, frontiers, log_scale) in zip(axes[0], panels):
        for name, points in frontiers.items():
            if log_scale or name != "oracle":
                _draw(ax, name, points)
        costs = [m.cost_usd for m in report.single_models.values()]
        rewards = [m.reward for m in report.single_models.values()]
        ax.scatter(costs, rewards, s=18, color="tab:olive", zorder=3, label="single models")
        for name in {report.reference.cheapest, report.reference.best_single}:
            single = report.single_models[name]
            ax.annotate(name, (single.cost_usd, single.reward), fontsize=8, xytext=(4, -10), textcoords="offset points")
        if log_scale:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("mean cost per prompt (USD, log scale)")
        else:
            ax.set_xlim(cheapest.cost_usd, best.cost_usd * 1.05)
            top = max(p.reward for name, f in frontiers.items() if name != "oracle" for p in f)
            ax.set_ylim(cheapest.reward - 0.02, top + 0.02)
            ax.set_xlabel("mean cost per prompt (USD)")
        ax.set_ylabel("mean realized reward per prompt")
        ax.set_title(f"{Path(report.dataset).name}: {title} ({report.folds}-fold mean, {report.encoder})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
