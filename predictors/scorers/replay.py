"""The `replay` scorer: a pairwise judge that answers from recorded verdicts instead of calling a model.

It reads the judge-replay format (`pairs.parquet`: instruction, output_1, output_2; `verdicts.parquet`: one
row per judge, mode, pair and presentation order, with the parsed winner and the characters sent and
received). Items are matched to recorded pairs by their text, so the hybrid, its order-consistency
certainty and its threshold calibration run on real verdicts exactly as they would on a live judge.

Tokens are estimated as characters / 4 of every call a verdict needed: the asked order(s), plus the earlier
calls it depended on (`aux_*`, shared by both orders, so counted once per pair). `tokens="output"` counts
the generated characters only (decode steps: what a one-word verdict saves is mostly these).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from predictors.scorers.base import ScoreBatch, ScoringItem
from predictors.scorers.pairwise import winner_rewards

CHARS_PER_TOKEN = 4
PAIRED_MODES = frozenset({"Swap", "Swap_CoT"})
"""Modes whose one verdict already needs both orders' first-pass calls (where those agreed, the row is one)."""

NO_RECORD = "no recorded verdict for this (prompt, response, alternative)"
UNPARSED = "the recorded verdict could not be parsed"


class VerdictLog:
    """Recorded pairs and verdicts, indexed by pair text and by (judge, mode)."""

    def __init__(self, pairs: pd.DataFrame, verdicts: pd.DataFrame) -> None:
        self.pairs = pairs.set_index("pair_id", drop=False)
        self._by_text = {
            (row.instruction, row.output_1, row.output_2): row.pair_id for row in pairs.itertuples(index=False)
        }
        verdicts = verdicts.assign(
            all_chars=verdicts["prompt_chars"].fillna(0) + verdicts["completion_chars"],
            all_aux=verdicts["aux_prompt_chars"] + verdicts["aux_completion_chars"],
            output_chars=verdicts["completion_chars"],
            output_aux=verdicts["aux_completion_chars"],
        )
        self._tables = {key: _order_table(group) for key, group in verdicts.groupby(["judge", "mode"])}

    @classmethod
    def read(cls, directory: Path) -> "VerdictLog":
        """The log in `directory` (pairs.parquet and verdicts.parquet)."""
        missing = [name for name in ("pairs.parquet", "verdicts.parquet") if not (directory / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{directory} lacks {', '.join(missing)}; fix: point at a judge-replay directory")
        return cls(pd.read_parquet(directory / "pairs.parquet"), pd.read_parquet(directory / "verdicts.parquet"))

    @property
    def judge_modes(self) -> list[tuple[str, str]]:
        return sorted(self._tables)

    def items(self, pair_ids: list[str]) -> list[ScoringItem]:
        """Each pair as a pairwise item: output_1 is the response, output_2 the alternative."""
        rows = self.pairs.loc[pair_ids]
        return [
            ScoringItem(row.instruction, row.output_1, alternative=row.output_2) for row in rows.itertuples(index=False)
        ]

    def lookup(self, items: list[ScoringItem]) -> tuple[list[str | None], np.ndarray]:
        """Each item's pair id (None if unrecorded) and whether its response is the pair's output_2."""
        ids, flipped = [], np.zeros(len(items), dtype=bool)
        for i, item in enumerate(items):
            pair = self._by_text.get((item.prompt, item.response, item.alternative))
            if pair is None:
                pair = self._by_text.get((item.prompt, item.alternative, item.response))
                flipped[i] = pair is not None
            ids.append(pair)
        return ids, flipped

    def table(self, judge: str, mode: str) -> pd.DataFrame:
        """Per pair: winners asked output_1-first (`w0`) and output_2-first (`w1`), and the characters of each
        call and of the aux calls, all sent and received (`all_*`) and received only (`output_*`)."""
        if (judge, mode) not in self._tables:
            known = ", ".join(f"{j}/{m}" for j, m in self.judge_modes)
            raise KeyError(f"no verdicts recorded for judge {judge!r} in mode {mode!r}; recorded: {known}")
        return self._tables[(judge, mode)]


def _order_table(group: pd.DataFrame) -> pd.DataFrame:
    columns = ["winner", "aux_calls", "all_chars", "all_aux", "output_chars", "output_aux"]
    by_order = group.set_index(["pair_id", "swap"])[columns].unstack("swap").astype("float64")
    table = {"w0": by_order[("winner", False)], "w1": by_order[("winner", True)]}
    for count in ("all", "output"):
        table[f"{count}_c0"] = by_order[(f"{count}_chars", False)]
        table[f"{count}_c1"] = by_order[(f"{count}_chars", True)]
        table[f"{count}_aux"] = by_order[(f"{count}_aux", False)]
    return pd.DataFrame(table | {"aux_calls": by_order[("aux_calls", False)]})


class ReplayJudge:
    """A recorded judge in one mode, asked in one order (response first) or both (`orders=2`).

    With both orders its certainty is their consistency; a verdict that could not be parsed is a missing
    reward or certainty, which the hybrid escalates rather than guesses. `tokens` is "all" (sent and
    received) or "output" (received only).
    """

    def __init__(
        self, name: str, log: VerdictLog, judge: str, mode: str, orders: int = 2, tokens: str = "all"
    ) -> None:
        if orders not in (1, 2):
            raise ValueError(f"orders must be 1 or 2, got {orders}")
        if tokens not in ("all", "output"):
            raise ValueError(f"tokens must be 'all' or 'output', got {tokens!r}")
        self.name, self.log, self.judge, self.mode, self.orders = name, log, judge, mode, orders
        self.tokens = tokens
        self._table = log.table(judge, mode)

    def pair_chars(self, asked: np.ndarray, other: np.ndarray, aux: np.ndarray, aux_calls: np.ndarray) -> np.ndarray:
        """Characters each verdict cost: the asked call (both orders' with `orders=2`), plus the aux calls once."""
        if self.orders == 2:
            return asked + other + aux
        needs_other = (self.mode in PAIRED_MODES) & (aux_calls == 0)
        return asked + aux + np.where(needs_other, other, 0.0)

    async def score(self, items: list[ScoringItem]) -> ScoreBatch:
        pair_ids, flipped = self.log.lookup(items)
        rows = self._table.reindex(pair_ids)  # unrecorded items come back as NaN rows
        w0, w1 = rows["w0"].to_numpy(), rows["w1"].to_numpy()
        response_first = np.where(flipped, 3 - w1, w0)
        alternative_first = np.where(flipped, 3 - w0, w1)
        rewards, certainty = winner_rewards(response_first, alternative_first if self.orders == 2 else None)
        c0, c1 = rows[f"{self.tokens}_c0"].to_numpy(), rows[f"{self.tokens}_c1"].to_numpy()
        asked, other, aux = np.where(flipped, c1, c0), np.where(flipped, c0, c1), rows[f"{self.tokens}_aux"].to_numpy()
        chars = np.nan_to_num(self.pair_chars(asked, other, aux, rows["aux_calls"].to_numpy()))
        errors = [
            NO_RECORD if pair is None else UNPARSED if np.isnan(reward) else None
            for pair, reward in zip(pair_ids, rewards, strict=True)
        ]
        return ScoreBatch(
            rewards,
            int(round(chars.sum() / CHARS_PER_TOKEN)),
            errors,
            slow=np.zeros(len(items), dtype=bool),
            certainty=certainty if self.orders == 2 else None,
        )
