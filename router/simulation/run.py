"""``erp simulate``'s work: validate inputs, run the simulation, print the table, write report.json, results.md and the plot.

Outputs are staged in a temporary folder and moved into --out only when complete.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from predictors.dataset import DatasetError, RoutingDataset, load_dataset
from router.simulation.folds import SimulationConfig
from router.simulation.plots import plot_frontiers
from router.simulation.report import Report
from router.simulation.summary import simulate
from router.simulation.tables import results_markdown

OUTPUT_FILES = ("report.json", "results.md", "frontier.png")


def _prepare_out(out: Path) -> Path:
    """Fail before any work if --out cannot be written; return a staging folder beside it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=out, prefix=".staging-"))
    except OSError as exc:
        raise DatasetError(f"--out {out}: cannot write there ({exc.strerror}); choose a writable folder") from None


def _load_checked(data_dir: Path, config: SimulationConfig) -> RoutingDataset:
    """The dataset, refused with a one-line DatasetError if the configuration cannot run on it."""
    if config.folds < 2:
        raise DatasetError(f"--folds {config.folds}: need at least 2 folds")
    data = load_dataset(data_dir)
    if config.holdout_model and config.holdout_model not in data.models:
        raise DatasetError(
            f"--holdout-model {config.holdout_model!r} is not a model of {data_dir}; choose one of: {', '.join(data.models)}"
        )
    smallest = min(data.prompts["category"].value_counts().min(), len(data.prompts))
    if len(data.prompts) < 2 * config.folds:
        raise DatasetError(
            f"{data_dir}: {len(data.prompts)} prompts are too few for {config.folds} folds (smallest category: {smallest})"
        )
    return data


def run_simulate(data_dir: Path, out: Path, config: SimulationConfig) -> Report:
    """Simulate, print the results table and write OUTPUT_FILES into ``out``: all of them, or none."""
    data = _load_checked(data_dir, config)
    created = not out.exists()
    staging = _prepare_out(out)
    try:
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
