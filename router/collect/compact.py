"""Compaction: the journal's scored samples for the current command -> the routing-dataset files in --out.

The loader needs an outcome of every model for every prompt. A model with no scored sample at all is left
out first (so one broken model does not empty the dataset), then every prompt that still lacks a model's
outcome; both are reported, and nothing leaves the journal. The files are staged in a hidden folder,
validated with the loader, then moved over the old ones with ``os.replace``: a reader sees the old file or
the new one, never half of one, and a run killed here is repaired by the next.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pandas as pd

from predictors.dataset import CHARS_PER_TOKEN, load_dataset
from router.collect.journal import Record, Triple

DATASET_FILES = ("models.csv", "prompts.parquet", "outcomes.parquet")
PROMPT_COLUMNS = ["prompt_id", "prompt", "category", "source", "prompt_chars", "system", "answer"]
OUTCOME_COLUMNS = ["prompt_id", "model", "sample", "reward", "output_chars", "output_tokens_est",
                   "response", "input_tokens", "output_tokens", "reasoning_tokens", "cost_usd", "logprobs"]


@dataclass(frozen=True)
class Compaction:
    prompts: int
    models: list[str]
    outcomes: int
    dropped_prompts: int
    dropped_models: list[str]

    @property
    def written(self) -> bool:
        return self.prompts > 0


def compact(
    folder: Path,
    prompts: pd.DataFrame,
    prices_per_mtok: dict[str, tuple[float, float]],
    samples: int,
    latest: dict[Triple, Record],
) -> Compaction:
    """Write prompts.parquet, outcomes.parquet and models.csv for ``prompts`` x the priced models x samples."""
    models = list(prices_per_mtok)
    columns = [f.name for f in fields(Record)]
    scored = pd.DataFrame(
        [asdict(r) for r in latest.values() if r.done and r.model in prices_per_mtok and r.sample < samples],
        columns=columns,
    )
    outcomes = prompts[["key", "prompt_id"]].merge(scored.drop(columns="prompt_id"), on="key")
    present = set(outcomes["model"])
    kept_models = [m for m in models if m in present]
    per_prompt = outcomes.groupby("prompt_id")["model"].nunique()
    complete = set(per_prompt.index[per_prompt == len(kept_models)])
    kept = prompts[prompts["prompt_id"].isin(complete)]
    dropped_prompts, dropped_models = len(prompts) - len(kept), [m for m in models if m not in present]
    if kept.empty:
        return Compaction(0, kept_models, 0, dropped_prompts, dropped_models)
    outcomes = _outcome_table(outcomes[outcomes["prompt_id"].isin(complete)], list(kept["prompt_id"]), kept_models)
    prices = pd.DataFrame(
        [(m, *prices_per_mtok[m]) for m in kept_models], columns=["model", "input_usd_per_mtok", "output_usd_per_mtok"]
    )
    _write_atomically(Path(folder), kept[PROMPT_COLUMNS].reset_index(drop=True), outcomes, prices)
    return Compaction(len(kept), kept_models, len(outcomes), dropped_prompts, dropped_models)


def _outcome_table(outcomes: pd.DataFrame, prompt_order: list[str], model_order: list[str]) -> pd.DataFrame:
    """Outcomes sorted by prompt, model and sample, with the length columns the loader reads."""
    position = {pid: i for i, pid in enumerate(prompt_order)}
    rank = {m: i for i, m in enumerate(model_order)}
    outcomes = outcomes.assign(_p=outcomes["prompt_id"].map(position), _m=outcomes["model"].map(rank))
    outcomes = outcomes.sort_values(["_p", "_m", "sample"]).reset_index(drop=True)
    chars = outcomes["response"].str.len().astype("float64")
    return pd.DataFrame(
        {
            "prompt_id": outcomes["prompt_id"],
            "model": outcomes["model"],
            "sample": outcomes["sample"].astype("int64"),
            "reward": outcomes["reward"].astype("float64"),
            "output_chars": chars,
            "output_tokens_est": (chars / CHARS_PER_TOKEN).round().astype("Int64"),
            "response": outcomes["response"],
            "input_tokens": outcomes["input_tokens"].astype("Int64"),
            "output_tokens": outcomes["output_tokens"].astype("Int64"),
            "reasoning_tokens": outcomes.get("reasoning_tokens", pd.Series(pd.NA, index=outcomes.index)).astype("Int64"),
            "cost_usd": outcomes["cost_usd"].astype("float64"),
            "logprobs": outcomes["logprobs"].map(lambda tokens: json.dumps(tokens) if isinstance(tokens, list) else None),
        }
    )[OUTCOME_COLUMNS]


def _write_atomically(folder: Path, prompts: pd.DataFrame, outcomes: pd.DataFrame, prices: pd.DataFrame) -> None:
    staging = Path(tempfile.mkdtemp(prefix=".compact-", dir=folder))
    try:
        prompts.to_parquet(staging / "prompts.parquet", index=False)
        outcomes.to_parquet(staging / "outcomes.parquet", index=False)
        prices.to_csv(staging / "models.csv", index=False)
        load_dataset(staging)
        for name in DATASET_FILES:
            os.replace(staging / name, folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
