"""Routing-dataset I/O: prompts x models x sampled rewards, validated on load.

The format (see ../shared/README.md): ``prompts.parquet`` (one row per prompt),
``outcomes.parquet`` (one row per sampled response) and ``models.csv`` (prices).
Everything downstream works on dense prompt x model matrices built here once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

PROMPT_COLUMNS = ("prompt_id", "prompt", "category")
OUTCOME_COLUMNS = ("prompt_id", "model", "reward")
PRICE_COLUMNS = ("model", "input_usd_per_mtok", "output_usd_per_mtok")
CHARS_PER_TOKEN = 4.0


class DatasetError(ValueError):
    """A routing dataset that cannot be used, with what is wrong and how to fix it."""


@dataclass(frozen=True)
class RoutingDataset:
    """Prompts, outcomes and prices of one routing dataset, aligned by prompt order."""

    prompts: pd.DataFrame
    outcomes: pd.DataFrame
    prices: pd.DataFrame
    source: str = ""

    @cached_property
    def models(self) -> list[str]:
        return list(self.prices["model"])

    @cached_property
    def prompt_ids(self) -> np.ndarray:
        return self.prompts["prompt_id"].to_numpy()

    @cached_property
    def texts(self) -> list[str]:
        return self.prompts["prompt"].tolist()

    @cached_property
    def categories(self) -> np.ndarray:
        return self.prompts["category"].astype(str).to_numpy()

    @cached_property
    def sources(self) -> np.ndarray | None:
        """The optional finer label (e.g. MMLU-Pro's subject sources); None where the data has no `source` column."""
        return self.prompts["source"].astype(str).to_numpy() if "source" in self.prompts else None

    @cached_property
    def input_tokens(self) -> np.ndarray:
        """Prompt length in tokens, estimated as chars / 4 like the datasets' own token estimates."""
        return self.prompts["prompt"].str.len().to_numpy(dtype=np.float64) / CHARS_PER_TOKEN

    def _pivot(self, values: pd.Series, how: str) -> np.ndarray:
        frame = self.outcomes.assign(_v=values)
        table = frame.pivot_table(index="prompt_id", columns="model", values="_v", aggfunc=how, dropna=False)
        table = table.reindex(index=self.prompt_ids, columns=self.models)
        return table.to_numpy(dtype=np.float64)

    @cached_property
    def rewards(self) -> np.ndarray:
        """Expected reward per (prompt, model): the mean over that pair's samples."""
        return self._pivot(self.outcomes["reward"], "mean")

    @cached_property
    def sample_counts(self) -> np.ndarray:
        """How many samples back each expected reward; used as fitting weights."""
        counts = self._pivot(self.outcomes["reward"], "count")
        return np.nan_to_num(counts, nan=0.0)

    @cached_property
    def output_tokens(self) -> np.ndarray:
        """Mean billed output tokens per (prompt, model), reasoning included; NaN where the data does not know.

        The billed ``output_tokens`` of a collected dataset (usage, reasoning included) where present; else the
        visible length (``output_tokens_est``, or ``output_chars`` / 4) plus ``reasoning_tokens`` where given.
        """
        outcomes = self.outcomes
        visible = pd.Series(np.nan, index=outcomes.index, dtype="Float64")
        if "output_tokens_est" in outcomes:
            visible = outcomes["output_tokens_est"].astype("Float64")
        elif "output_chars" in outcomes:
            visible = outcomes["output_chars"].astype("Float64") / CHARS_PER_TOKEN
        if "reasoning_tokens" in outcomes:
            visible = visible + outcomes["reasoning_tokens"].astype("Float64").fillna(0)
        if "output_tokens" in outcomes:
            visible = outcomes["output_tokens"].astype("Float64").fillna(visible)
        return self._pivot(visible.astype(np.float64), "mean")

    @cached_property
    def price_matrix(self) -> np.ndarray:
        """USD per token, shape (models, 2): input, output."""
        per_mtok = self.prices[["input_usd_per_mtok", "output_usd_per_mtok"]].to_numpy(dtype=np.float64)
        return per_mtok / 1e6


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(
            f"{path}: file not found; a routing dataset folder needs prompts.parquet, "
            "outcomes.parquet and models.csv (format in README.md)"
        )
    try:
        return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except Exception as exc:  # pyarrow and pandas raise many unrelated types for corrupt files
        raise DatasetError(f"{path}: cannot be read ({type(exc).__name__}: {exc}); rewrite the file") from exc


def _require_columns(frame: pd.DataFrame, columns: tuple[str, ...], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}; add them (format in README.md)")


def _validate(prompts: pd.DataFrame, outcomes: pd.DataFrame, prices: pd.DataFrame, root: Path) -> None:
    duplicated = prompts["prompt_id"][prompts["prompt_id"].duplicated()]
    if len(duplicated):
        raise DatasetError(f"{root / 'prompts.parquet'}: prompt_id {duplicated.iloc[0]!r} appears twice; ids must be unique")
    if prompts["prompt"].isna().any():
        raise DatasetError(f"{root / 'prompts.parquet'}: {int(prompts['prompt'].isna().sum())} prompt(s) have no text; drop them")
    price_values = prices[["input_usd_per_mtok", "output_usd_per_mtok"]]
    unpriced = prices.loc[price_values.isna().any(axis=1), "model"].tolist()
    priced = set(prices["model"])
    unpriced += sorted(set(outcomes["model"]) - priced)
    if unpriced:
        raise DatasetError(
            f"{root / 'models.csv'}: no price for model(s) {', '.join(map(str, unpriced[:5]))}; "
            "add a row with input_usd_per_mtok and output_usd_per_mtok for each"
        )
    if (price_values < 0).any().any():
        raise DatasetError(f"{root / 'models.csv'}: negative price; prices are USD per million tokens, >= 0")
    bad_rewards = outcomes["reward"].isna() | ~np.isfinite(outcomes["reward"].astype(float))
    if bad_rewards.any():
        row = outcomes[bad_rewards].iloc[0]
        raise DatasetError(
            f"{root / 'outcomes.parquet'}: {int(bad_rewards.sum())} NaN or infinite reward(s), first at "
            f"prompt_id={row['prompt_id']!r} model={row['model']!r}; drop or re-score those samples"
        )
    if outcomes["reward"].min() < 0 or outcomes["reward"].max() > 1:
        raise DatasetError(
            f"{root / 'outcomes.parquet'}: rewards must lie in [0, 1] (found {outcomes['reward'].min():g} to "
            f"{outcomes['reward'].max():g}); rescale the scores, e.g. min-max, before routing"
        )
    unknown = set(outcomes["prompt_id"]) - set(prompts["prompt_id"])
    if unknown:
        raise DatasetError(
            f"{root / 'outcomes.parquet'}: {len(unknown)} outcome prompt_id(s) not in prompts.parquet, "
            f"e.g. {sorted(unknown)[0]!r}; add the prompts or drop those outcomes"
        )
    pairs = outcomes[["prompt_id", "model"]].drop_duplicates()
    per_prompt = pairs.groupby("prompt_id").size().reindex(prompts["prompt_id"], fill_value=0)
    incomplete = per_prompt[per_prompt < len(prices)]
    if len(incomplete):
        raise DatasetError(
            f"{root / 'outcomes.parquet'}: {len(incomplete)} prompt(s) lack an outcome for some model, "
            f"e.g. {incomplete.index[0]!r} has {int(incomplete.iloc[0])} of {len(prices)}; "
            "every prompt needs at least one sample from every model (drop or complete them)"
        )


def load_dataset(path: str | Path) -> RoutingDataset:
    """Read and validate a routing dataset folder; raise DatasetError naming the file and the fix."""
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory; pass a routing dataset folder (e.g. ../shared/data/zeroeval)")
    prompts = _read(root / "prompts.parquet")
    outcomes = _read(root / "outcomes.parquet")
    prices = _read(root / "models.csv")
    _require_columns(prompts, PROMPT_COLUMNS, root / "prompts.parquet")
    _require_columns(outcomes, OUTCOME_COLUMNS, root / "outcomes.parquet")
    _require_columns(prices, PRICE_COLUMNS, root / "models.csv")
    if prompts.empty:
        raise DatasetError(f"{root / 'prompts.parquet'}: no prompts")
    prices = prices.astype({"model": str})
    outcomes = outcomes.astype({"prompt_id": str, "model": str})
    prompts = prompts.astype({"prompt_id": str}).reset_index(drop=True)
    _validate(prompts, outcomes, prices, root)
    return RoutingDataset(prompts, outcomes, prices.reset_index(drop=True), str(root))
