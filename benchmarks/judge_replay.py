"""Fast/slow judging on recorded judge verdicts with gold labels (../shared/data/judge-replay).

Every policy is the product's own scorer run on `replay` judges: a judge's one-word verdict alone (fast),
one slow verdict alone (its chain-of-thought `CoT` or `Metrics_Reference`), the hybrid (one-word verdict
in both orders; where the orders disagree, a slow verdict from the same judge or from GPT-4), and
three-stage cascades (judge one-word -> GPT-4 one-word -> GPT-4 slow, each stage only where the one
before disagrees with itself across orders).

Per seed, each group's pairs are split in half by instruction (MT-Bench's pairs share instructions):
hybrid thresholds are calibrated on one half at each target slow share, and every choice (which target
is a policy's operating point, which slow policy is best, which hybrid answers the target) is made on
that half; accuracy (gold label, an unparsed verdict counting wrong), share escalated at each stage (of
all pairs: reaching the second stage, then the third) and tokens (characters / 4 of every call, aux calls
once per pair) are measured on the other half, pooled over seeds, with 95% bootstrap intervals over pairs.

    python -m benchmarks.judge_replay --data ../shared/data/judge-replay --seeds 5 \\
        --out benchmarks/results/judge-replay.md --plot benchmarks/results/judge-replay.png
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from predictors.scorers.agreement import AgreementScorer
from predictors.scorers.base import RewardScorer, ScoreBatch
from predictors.scorers.hybrid import HybridScorer
from predictors.scorers.replay import ReplayJudge, VerdictLog

TARGETS = tuple(np.round(np.arange(0.1, 0.91, 0.1), 2))
CASCADE_INNER_TARGETS = (0.25, 0.5)
STRONG = "GPT-4"


@dataclass(frozen=True)
class Group:
    name: str
    prefix: str | tuple[str, ...]
    fast: str
    slow: tuple[str, ...]


GROUPS = (
    Group("LLMBar", "LLMBar/", "Vanilla", ("CoT", "Metrics_Reference")),
    Group("FairEval+LLMEval^2+MT-Bench", "Processed/", "Vanilla_NoRules", ("Metrics_Reference",)),
)


@dataclass(frozen=True)
class Policy:
    name: str
    kind: str  # fast | slow | hybrid | cascade
    judge: str
    build: Callable[[str], RewardScorer]  # tokens counted: "all" or "output"
    deeper: tuple[float, ...] = ()

    @property
    def stages(self) -> int:
        """Scorers in the policy's chain: 1 alone, 2 for a hybrid, 3 for a three-stage cascade."""
        return 1 if self.kind in ("fast", "slow") else 2 + len(self.deeper)


def policies(log: VerdictLog, group: Group, judges: list[str]) -> list[Policy]:
    """Fast-only and slow-only per judge, hybrids to its own and to GPT-4's slow modes, and cascades."""
    def judge(j: str, mode: str, orders: int, tokens: str) -> ReplayJudge:
        return ReplayJudge(f"{j}/{mode}/{orders}", log, j, mode, orders, tokens)

    out = []
    for j in judges:
        out.append(Policy(f"{j} fast", "fast", j, lambda t, j=j: judge(j, group.fast, 1, t)))
        for mode in group.slow:
            out.append(Policy(f"{j} {mode}", "slow", j, lambda t, j=j, m=mode: judge(j, m, 1, t)))
            for slow_judge in dict.fromkeys((j, STRONG)):
                out.append(Policy(
                    f"{j} fast, else {slow_judge} {mode}", "hybrid", j,
                    lambda t, j=j, s=slow_judge, m=mode: HybridScorer(
                        "h", judge(j, group.fast, 2, t), judge(s, m, 1, t)),
                ))
            if j == STRONG:
                continue
            if mode == group.slow[-1]:
                out += checked_policies(judge, group, j, [k for k in judges if k > j and k != STRONG])
            for inner in CASCADE_INNER_TARGETS:
                out.append(Policy(
                    f"{j} fast, else {STRONG} fast, else {STRONG} {mode} (inner {inner:g})", "cascade", j,
                    lambda t, j=j, m=mode: HybridScorer("c", judge(j, group.fast, 2, t), HybridScorer(
                        "c2", judge(STRONG, group.fast, 2, t), judge(STRONG, m, 1, t))),
                    deeper=(inner,),
                ))
    return out


def checked_policies(judge: Callable, group: Group, j: str, checkers: list[str]) -> list[Policy]:
    """Judge j's one-word verdict checked by another judge's (one order each), else GPT-4's last slow mode.

    Each unordered pair of checkers once: where the two agree the verdict is the same whichever is first."""
    mode = group.slow[-1]
    return [
        Policy(
            f"{j} fast checked by {k}, else {STRONG} {mode}", "hybrid", j,
            lambda t, k=k: HybridScorer("a", AgreementScorer(
                "a", judge(j, group.fast, 1, t), judge(k, group.fast, 1, t)), judge(STRONG, mode, 1, t)),
        )
        for k in checkers
    ]


def split_by_instruction(pairs: pd.DataFrame, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (calibration, held out): half of the instructions each, every pair with its instruction."""
    instructions = pairs["instruction"].unique()
    rng = np.random.default_rng(seed)
    calibration = set(rng.permutation(instructions)[: len(instructions) // 2])
    mask = pairs["instruction"].isin(calibration).to_numpy()
    return mask, ~mask


def escalated(batch: ScoreBatch, stages: int) -> dict[str, float]:
    """Share of the items reaching each stage after the first: {"escalated_1": to stage 2, "escalated_2": ...}."""
    return {f"escalated_{k}": float((batch.stage >= k).mean()) for k in range(1, stages)}


async def run_policy(policy: Policy, target: float | None, cal: list, held: list) -> dict:
    """Calibrate (hybrids) on `cal`, score both halves; correctness is judged by the caller.

    A second copy counting output tokens only scores the held-out half; replay makes its routing identical.
    """
    scorer, output_only = policy.build("all"), policy.build("output")
    if target is not None:
        await scorer.calibrate(cal, target, policy.deeper)
        await output_only.calibrate(cal, target, policy.deeper)
    on_cal, on_held = await scorer.score(cal), await scorer.score(held)
    shares = escalated(on_held, policy.stages)
    return {"cal": on_cal, "held": on_held, "escalated": shares, "output": (await output_only.score(held)).tokens}


def hit_key(seed: int, policy: str, target: float | None) -> tuple:
    """Key of one run's held-out hits; a missing target (a table's NaN) is None."""
    return int(seed), policy, None if target is None or pd.isna(target) else round(float(target), 2)


def correct(rewards: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Whether the verdict names the gold output; a missing verdict is wrong."""
    return np.where(np.isnan(rewards), False, (rewards == 1) == (labels == 1))


async def measure(log: VerdictLog, group: Group, seeds: int, judges: list[str]) -> tuple[pd.DataFrame, dict]:
    """One row per (seed, policy, target) with calibration and held-out numbers; held-out hits per pair."""
    pairs = log.pairs[log.pairs["set"].str.startswith(group.prefix)]
    labels = pairs["label"].to_numpy()
    rows, hits = [], {}
    for seed in range(seeds):
        cal_mask, held_mask = split_by_instruction(pairs, seed)
        cal, held = log.items(list(pairs["pair_id"][cal_mask])), log.items(list(pairs["pair_id"][held_mask]))
        held_ids = np.flatnonzero(held_mask)
        for policy in policies(log, group, judges):
            for target in TARGETS if policy.kind in ("hybrid", "cascade") else (None,):
                result = await run_policy(policy, target, cal, held)
                held_hits = correct(result["held"].rewards, labels[held_mask])
                hits[hit_key(seed, policy.name, target)] = (held_ids, held_hits)
                rows.append({
                    "seed": seed, "policy": policy.name, "kind": policy.kind, "judge": policy.judge,
                    "target": target,
                    "cal_acc": correct(result["cal"].rewards, labels[cal_mask]).mean(),
                    "cal_tokens": result["cal"].tokens / cal_mask.sum(),
                    "acc": held_hits.mean(), "tokens": result["held"].tokens / held_mask.sum(),
                    "output_tokens": result["output"] / held_mask.sum(), "stages": policy.stages,
                    **result["escalated"],
                })
    return pd.DataFrame(rows), hits


def bootstrap(picked: list[tuple[np.ndarray, np.ndarray]], n_pairs: int, draws: int = 2000) -> tuple[float, float]:
    """95% interval of pooled accuracy, resampling pairs (with all their seeds' rows) with replacement."""
    ids = np.concatenate([p[0] for p in picked])
    hit = np.concatenate([p[1] for p in picked]).astype(np.float64)
    hits_per_pair, rows_per_pair = np.bincount(ids, hit, n_pairs), np.bincount(ids, minlength=n_pairs)
    resampled = np.random.default_rng(0).integers(0, n_pairs, size=(draws, n_pairs))
    accuracy = hits_per_pair[resampled].sum(axis=1) / np.maximum(rows_per_pair[resampled].sum(axis=1), 1)
    low, high = np.quantile(accuracy, [0.025, 0.975])
    return float(low), float(high)


def operating_points(rows: pd.DataFrame) -> pd.DataFrame:
    """Per seed and policy, the row used as its operating point, chosen on the calibration half only.

    Hybrids and cascades take the smallest target whose calibration accuracy reaches that seed's best
    slow-only policy's, else their most accurate target on calibration.
    """
    best_slow = rows[rows["kind"] == "slow"].groupby("seed")["cal_acc"].max()
    rows = rows.assign(bar=rows["seed"].map(best_slow))
    chosen = []
    for _, group in rows.groupby(["seed", "policy"], sort=False):
        reaching = group[group["cal_acc"] >= group["bar"]]
        chosen.append(reaching.iloc[0] if len(reaching) else group.loc[group["cal_acc"].idxmax()])
    return pd.DataFrame(chosen).drop(columns="bar")


HYBRID_ROLE = "hybrid/cascade: cheapest reaching it, else most accurate"
HALF_ROLE = "any policy: most accurate at <= half its tokens"


def answers(rows: pd.DataFrame) -> pd.DataFrame:
    """Per seed, chosen on calibration: the best slow-only policy; the cheapest hybrid or cascade at least as
    accurate (else the most accurate one); the most accurate policy at no more than half the slow one's tokens."""
    picks = []
    for _, group in rows.groupby("seed"):
        slow = group[group["kind"] == "slow"]
        best = slow.loc[slow["cal_acc"].idxmax()]
        mixed = group[group["kind"].isin(["hybrid", "cascade"])]
        reaching = mixed[mixed["cal_acc"] >= best["cal_acc"]]
        if len(reaching):
            hybrid = reaching.loc[reaching["cal_tokens"].idxmin()]
        else:
            hybrid = mixed.loc[mixed["cal_acc"].idxmax()]
        half = group[group["cal_tokens"] <= best["cal_tokens"] / 2]
        picks += [best.to_dict() | {"role": "best always-slow"}, hybrid.to_dict() | {"role": HYBRID_ROLE}]
        if len(half):
            picks.append(half.loc[half["cal_acc"].idxmax()].to_dict() | {"role": HALF_ROLE})
    return pd.DataFrame(picks)


def pooled(rows: pd.DataFrame, hits: dict, n_pairs: int) -> dict:
    """Held-out accuracy pooled over the rows' seeds with its interval, mean tokens, and the mean share
    escalated to each stage the deepest of the rows has (a row with fewer stages escalates none there)."""
    picked = [hits[hit_key(row.seed, row.policy, row.target)] for row in rows.itertuples()]
    accuracy = np.concatenate([p[1] for p in picked]).mean()
    low, high = bootstrap(picked, n_pairs)
    means = rows[["tokens", "output_tokens"]].mean()
    columns = [f"escalated_{k}" for k in range(1, int(rows["stages"].max()))]
    shares = rows.reindex(columns=columns).fillna(0.0).mean().tolist()
    return {"acc": accuracy, "low": low, "high": high, **means.to_dict(), "escalated": shares}


def signal_table(log: VerdictLog, group: Group, judges: list[str]) -> pd.DataFrame:
    """Each judge's fast verdict checked by its own other order or by another judge's fast verdict:
    how often the check passes and the verdict's accuracy where it does and where not, per kind of pair."""
    pairs = log.pairs[log.pairs["set"].str.startswith(group.prefix)]
    kind = np.where(pairs["set"].str.contains("Adversarial"), "adversarial",
                    np.where(pairs["set"].str.contains("Natural"), "natural", "human preference"))
    labels, items, rows = pairs["label"].to_numpy(), log.items(list(pairs["pair_id"])), []
    for j in judges:
        checks = {"own other order": ReplayJudge(j, log, j, group.fast, 2)} | {
            f"agrees with {k}": AgreementScorer(j, ReplayJudge(j, log, j, group.fast, 1),
                                                ReplayJudge(k, log, k, group.fast, 1))
            for k in judges if k != j
        }
        for signal, scorer in checks.items():
            batch = asyncio.run(scorer.score(items))
            hit, sure = correct(batch.rewards, labels), batch.certainty == 1
            for name in dict.fromkeys(kind):
                k = kind == name
                rows.append({"judge": j, "signal": signal, "pairs": name, "n": int(k.sum()), "passes": sure[k].mean(),
                             "acc_if_passes": hit[k & sure].mean(), "acc_if_not": hit[k & ~sure].mean()})
    return pd.DataFrame(rows).sort_values(["pairs", "judge"], kind="stable")


def judges_for(log: VerdictLog, group: Group) -> list[str]:
    """Judges with the group's fast and slow modes recorded on its pairs."""
    pair_ids = log.pairs.index[log.pairs["set"].str.startswith(group.prefix)]
    judges = {j for j, _ in log.judge_modes}
    return sorted(
        j for j in judges
        if all((j, m) in log.judge_modes and log.table(j, m).index.isin(pair_ids).any()
               for m in (group.fast, *group.slow))
    )


def fmt(stats: dict) -> str:
    return f"{stats['acc']:.3f} [{stats['low']:.3f}, {stats['high']:.3f}]"


def fmt_escalated(shares: list[float]) -> str:
    """"-" for a single scorer; else the share reaching each later stage, e.g. "0.52 > 0.21"."""
    return " > ".join(f"{share:.2f}" for share in shares) or "-"


def group_report(log: VerdictLog, group: Group, seeds: int) -> tuple[str, pd.DataFrame]:
    """The group's markdown section and its (policy, target) curve points for the plot."""
    judges = judges_for(log, group)
    rows, hits = asyncio.run(measure(log, group, seeds, judges))
    n_pairs = int(log.pairs["set"].str.startswith(group.prefix).sum())
    points = operating_points(rows)
    picks = answers(rows)
    best = pooled(picks[picks["role"] == "best always-slow"], hits, n_pairs)
    lines = [f"### {group.name} ({n_pairs} pairs; fast = `{group.fast}`, slow = {', '.join(group.slow)})", "",
             "| chosen on calibration | policies picked (seeds) | held-out acc [95% CI] | escalated per stage "
             "| tokens/pair "
             "| tokens vs best slow | output tokens/pair | output vs best slow |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for role, chosen in picks.groupby("role", sort=False):
        stats = pooled(chosen, hits, n_pairs)
        labels = [f"{p} @ {t:g}" if pd.notna(t) else p for p, t in zip(chosen["policy"], chosen["target"])]
        names = "; ".join(f"{name} ({n})" for name, n in pd.Series(labels).value_counts().items())
        lines.append(f"| {role} | {names} | {fmt(stats)} | {fmt_escalated(stats['escalated'])} "
                     f"| {stats['tokens']:.0f} "
                     f"| {stats['tokens'] / best['tokens']:.2f} | {stats['output_tokens']:.0f} "
                     f"| {stats['output_tokens'] / best['output_tokens']:.2f} |")
    lines += ["", "Every policy at its operating point (hybrids: smallest target reaching the best slow policy's "
              "calibration accuracy, else their best):", "",
              "| policy | target | held-out acc [95% CI] | escalated per stage | tokens/pair | output tokens/pair |",
              "|---|---:|---|---:|---:|---:|"]
    for name, chosen in points.groupby("policy", sort=False):
        stats = pooled(chosen, hits, n_pairs)
        target = f"{chosen['target'].mean():.2f}" if chosen["target"].notna().all() else "-"
        lines.append(f"| {name} | {target} | {fmt(stats)} | {fmt_escalated(stats['escalated'])} "
                     f"| {stats['tokens']:.0f} | {stats['output_tokens']:.0f} |")
    signals = signal_table(log, group, judges)
    lines += ["", "Confidence signals for the fast verdict (one-word, output_1 first), all pairs of the group:", "",
              "| pairs | n | judge | check | passes | acc where it passes | acc where not |",
              "|---|---:|---|---|---:|---:|---:|"]
    lines += [f"| {r.pairs} | {r.n} | {r.judge} | {r.signal} | {r.passes:.3f} | {r.acc_if_passes:.3f} "
              f"| {r.acc_if_not:.3f} |" for r in signals.itertuples()]
    curves = rows.groupby(["policy", "kind", "judge", "target"], dropna=False)[["acc", "tokens"]].mean()
    return "\n".join(lines) + "\n", curves.reset_index()


def plot(curves: dict[str, pd.DataFrame], path: Path) -> None:
    """Held-out accuracy against tokens per pair: points for single policies, hybrids traced by target share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(9 * len(curves), 13), squeeze=False)
    colors = dict(zip(sorted({j for c in curves.values() for j in c["judge"]}), plt.cm.tab10.colors))
    for ax, (title, points) in zip(axes[0], curves.items()):
        for (name, kind, judge), policy in points.groupby(["policy", "kind", "judge"], sort=False):
            policy = policy.sort_values("target")
            style = {"fast": dict(marker="o", linestyle=""), "slow": dict(marker="s", linestyle=""),
                     "hybrid": dict(linestyle="-"), "cascade": dict(linestyle=":")}[kind]
            if kind == "slow" and "Metrics" in name:
                style["marker"] = "^"
            if kind == "hybrid" and STRONG in name.split("else")[-1] and judge != STRONG:
                style["linestyle"] = "-." if "checked by" in name else "--"
            ax.plot(policy["tokens"], policy["acc"], color=colors[judge], alpha=0.8, linewidth=1.2, **style,
                    label=name if kind != "cascade" or "inner 0.25" in name else None)
        ax.set(title=f"{title}: held-out, mean over seeds", xlabel="estimated tokens per pair (chars / 4)",
               ylabel="accuracy vs gold")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(0, -0.08))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fast/slow judging replayed on recorded verdicts with gold labels.")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/judge-replay"))
    parser.add_argument("--seeds", type=int, default=5, help="instruction splits (calibration / held out)")
    parser.add_argument("--out", type=Path, help="markdown file for the tables (also printed)")
    parser.add_argument("--plot", type=Path, help="PNG of accuracy against tokens")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        print("judge_replay: error: --seeds must be at least 1", file=sys.stderr)
        return 2
    try:
        log = VerdictLog.read(args.data)
    except FileNotFoundError as exc:
        print(f"judge_replay: error: {exc}", file=sys.stderr)
        return 2
    sections, curves = [], {}
    for group in GROUPS:
        section, curves[group.name] = group_report(log, group, args.seeds)
        sections.append(section)
    text = "\n".join(sections)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    if args.plot:
        plot(curves, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
