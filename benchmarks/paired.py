"""ERP against every baseline, paired fold by fold over several seeds: the table behind "ERP never loses to a baseline".

    python -m benchmarks.paired --data ../shared/data/zeroeval --out benchmarks/results/paired-zeroeval.md

Each seed is one full ``erp simulate`` run (``router.simulation.summary.simulate``, the shipped defaults); a
fold's ERP and baselines share its test prompts, so the per-fold difference of their APGRs is the comparison.
A baseline is beaten when the mean paired gap is above zero and ERP is ahead in at least ``--min-ahead`` folds.
With ``--reports DIR`` each seed's report is saved there as ``seed-N.json`` and reused when present, so seeds
can run as separate processes side by side and a last call with all seeds writes the table.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from predictors.dataset import load_dataset
from predictors.embedding import Encoder
from router.simulation.folds import SimulationConfig
from router.simulation.report import Report
from router.simulation.summary import simulate

os.environ.setdefault("HF_HUB_OFFLINE", "1")

NOT_COMPARED = ("oracle",)  # the realized rewards: an upper bound, not a baseline ERP can contain


def _match(values: list[float | None]) -> str:
    reached = [v for v in values if v is not None]
    return f"{np.mean(reached):.3f} ({len(reached)}/{len(values)})" if reached else "never"


def erp_rows(reports: dict[int, Report]) -> list[str]:
    """ERP's APGR and cost to match the best single model, per seed (mean over its folds) and over all folds."""
    lines = ["| seed | ERP APGR | cost to match best single (folds reaching it) | folds time (s) |", "|---|---|---|---|"]
    for seed, report in reports.items():
        s = report.summary
        match = "never" if s.cost_to_match_best is None else f"{s.cost_to_match_best:.3f} ({s.cost_to_match_best_folds}/{report.folds})"
        lines.append(f"| {seed} | {s.apgr:.3f} | {match} | {report.timing.folds_s:.0f} |")
    apgrs = [a for r in reports.values() for a in r.summary.apgr_folds]
    lines.append(f"| all | {np.mean(apgrs):.3f} | | |")
    return lines


def paired_rows(reports: dict[int, Report], min_ahead: int) -> list[str]:
    """One row per baseline: its APGR, ERP minus it per seed and over all folds, folds ERP is ahead, verdict."""
    seeds = list(reports)
    names = [n for n in next(iter(reports.values())).baselines if n not in NOT_COMPARED]
    lines = [
        "| baseline | APGR (all folds) | "
        + " | ".join(f"ERP minus it, seed {s}" for s in seeds)
        + " | ERP minus it, all folds (folds ERP ahead) | ERP ahead? |",
        "|---|---|" + "---|" * len(seeds) + "---|---|",
    ]
    erp = {s: np.array(r.summary.apgr_folds) for s, r in reports.items()}
    for name in names:
        theirs = {s: np.array(r.baselines[name].apgr_folds) for s, r in reports.items()}
        gaps = {s: erp[s] - theirs[s] for s in seeds}
        pooled = np.concatenate(list(gaps.values()))
        ahead = int((pooled > 0).sum())
        verdict = "yes" if pooled.mean() > 0 and ahead >= min_ahead else "**no**"
        lines.append(
            f"| {name} | {np.concatenate(list(theirs.values())).mean():.3f} | "
            + " | ".join(f"{gaps[s].mean():+.4f}" for s in seeds)
            + f" | {pooled.mean():+.4f} ± {pooled.std():.4f} ({ahead}/{len(pooled)}) | {verdict} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--min-ahead", type=int, default=10, help="folds ERP must be ahead in, out of folds x seeds")
    parser.add_argument("--reports", help="folder to save each seed's report in, and to reuse it from")
    args = parser.parse_args()
    data = load_dataset(args.data)
    encoder = Encoder("minilm")
    started, load = time.perf_counter(), os.getloadavg()[0]
    reports = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        saved = Path(args.reports) / f"seed-{seed}.json" if args.reports else None
        if saved is not None and saved.is_file():
            reports[seed] = Report.model_validate_json(saved.read_text())
            continue
        reports[seed] = simulate(data, SimulationConfig(folds=args.folds, seed=seed), encoder, progress=False)
        print(f"seed {seed}: ERP {reports[seed].summary.apgr:.3f}, folds {reports[seed].timing.folds_s:.0f} s", flush=True)
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(reports[seed].model_dump_json(by_alias=True))
    lines = [
        f"# {Path(args.data).name}: ERP against every baseline, paired over {args.folds} folds x seeds {args.seeds}",
        "",
        f"`erp simulate` defaults (encoder minilm, backend auto), {len(data.prompts)} prompts, {len(data.models)} models. "
        f"A gap is ERP's APGR minus the baseline's on the same fold; ERP is ahead of a baseline when the mean gap is"
        f" above zero and it is ahead in at least {args.min_ahead} folds.",
        "",
        *erp_rows(reports),
        "",
        *paired_rows(reports, args.min_ahead),
        "",
        f"Command: `python -m benchmarks.paired --data {args.data} --out {args.out} --seeds {args.seeds}`"
        f" ({time.perf_counter() - started:.0f} s, load average {load:.1f} at the start).",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
