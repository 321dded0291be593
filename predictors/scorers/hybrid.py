"""Fast/slow hybrid scoring: a cheap scorer for every item, the chain-of-thought judge only where it is unsure.

After the fast/slow-thinking reward models: the fast scorer (a local reward model or a single-token
log-probability judge) gives a score and two confidences,

- certainty: the fast scorer's own (a judge's probability on its top score token; a reward model's
  distance from the decision boundary in calibration spreads), and
- agreement: 1 - |fast reward - expected reward of (prompt, model) from the ERP predictor|,

and an item goes to the slow judge when either is below its threshold (or the fast scorer failed on it).

Threshold rule (equal quantiles): both thresholds sit at the same quantile q of their own calibration
distributions, so neither confidence is favored and their scales need not match; q is the grid point
(step 0.001) whose share of calibration items sent slow is closest to the target fraction. That share
grows with q and lies between q and 2q (plus the items the fast scorer failed on). Ties in certainty are
broken by a stable hash of the item's text (adding under 1e-9, so distinct certainties keep their order):
a coarse signal such as a pairwise judge's order consistency (0 or 1) can then still meet any slow share.

Cascades of more than two stages are hybrids nested on the slow side, Hybrid(a, Hybrid(b, c)): each stage
runs only on what the stage before was unsure of, and each is calibrated on the items that reach it. The
outer calibration holds the inner one (`deeper`), so one thresholds file restores the whole cascade.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from predictors.scorers.base import RewardScorer, ScoreBatch, ScoringItem

ExpectedReward = Callable[[list[str], list[str | None]], np.ndarray]
"""(prompts, models) -> each pair's expected reward from the ERP predictor; NaN where it has none."""

_QUANTILES = np.linspace(0.0, 1.0, 1001)
_TIE_BREAK = 1e-9


def tie_keys(items: list[ScoringItem]) -> np.ndarray:
    """A stable pseudo-random number in [0, 1) per item, from its text: the same item always gets the same."""
    keys = []
    for item in items:
        text = "\x1f".join((item.prompt, item.response, item.alternative or "", item.system or ""))
        keys.append(int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") / 2**64)
    return np.array(keys, dtype=np.float64)


class HybridCalibration(BaseModel):
    """What `HybridScorer.calibrate` learned; saved as JSON so a calibrated hybrid is reused as is."""

    model_config = ConfigDict(extra="forbid")

    fast: str
    slow: str
    quantile: float = Field(ge=0, le=1)
    certainty_threshold: float
    agreement_threshold: float | None = Field(description="None when the hybrid has no ERP predictor")
    target_slow_fraction: float
    calibration_slow_fraction: float = Field(description="share of calibration items the thresholds send slow")
    n_items: int
    fast_state: dict[str, float] | None = Field(None, description="the fast scorer's own calibration, if any")
    deeper: HybridCalibration | None = Field(
        None, description="a cascade's next stage (the slow part, a hybrid itself), calibrated on what reaches it"
    )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "HybridCalibration":
        return cls.model_validate_json(path.read_text())


def send_slow(
    rewards: np.ndarray,
    certainty: np.ndarray,
    agreement: np.ndarray | None,
    certainty_threshold: float | np.ndarray,
    agreement_threshold: float | np.ndarray | None,
) -> np.ndarray:
    """Items the slow judge must score; thresholds may be arrays (one column per candidate pair).

    A missing fast score or certainty always goes slow; a missing agreement (no ERP prediction for that
    model) leaves the decision to certainty alone.
    """
    certainty_threshold = np.atleast_1d(certainty_threshold)
    unsure = (np.isnan(rewards) | np.isnan(certainty))[:, None] | (certainty[:, None] < certainty_threshold[None, :])
    if agreement is not None and agreement_threshold is not None:
        unsure |= agreement[:, None] < np.atleast_1d(agreement_threshold)[None, :]
    return unsure if unsure.shape[1] > 1 else unsure[:, 0]


def choose_thresholds(
    rewards: np.ndarray, certainty: np.ndarray, agreement: np.ndarray | None, target: float
) -> tuple[float, float, float | None, float]:
    """(q, certainty threshold, agreement threshold, achieved slow share) by the equal-quantile rule."""
    if np.isnan(certainty).all():
        raise ValueError("the fast scorer gave no certainty on the calibration set; nothing to threshold")
    certainty_thresholds = np.nanquantile(certainty, _QUANTILES)
    use_agreement = agreement is not None and not np.isnan(agreement).all()
    agreement_thresholds = np.nanquantile(agreement, _QUANTILES) if use_agreement else None
    shares = send_slow(rewards, certainty, agreement, certainty_thresholds, agreement_thresholds).mean(axis=0)
    best = int(np.argmin(np.abs(shares - target)))
    agreement_threshold = float(agreement_thresholds[best]) if use_agreement else None
    return float(_QUANTILES[best]), float(certainty_thresholds[best]), agreement_threshold, float(shares[best])


class HybridScorer:
    """Scores with `fast`, re-scores the unsure items with `slow`; `calibrate` before `score`."""

    def __init__(
        self, name: str, fast: RewardScorer, slow: RewardScorer, expected_reward: ExpectedReward | None = None
    ) -> None:
        self.name, self.fast, self.slow, self.expected_reward = name, fast, slow, expected_reward
        self.calibration_: HybridCalibration | None = None

    async def calibrate(
        self, items: list[ScoringItem], target_slow_fraction: float, deeper: Sequence[float] = ()
    ) -> HybridCalibration:
        """Calibrate the fast scorer (if it can be), then set both thresholds to hit the target slow share.

        `deeper` holds the targets of a cascade's later stages (the slow part is a hybrid itself): each is
        calibrated on the calibration items the stage before sends on, never on the rest. Without them a
        hybrid slow part keeps the thresholds it has. Either way the result records every stage's.
        """
        if not 0 < target_slow_fraction < 1:
            raise ValueError(f"target_slow_fraction must be in (0, 1), got {target_slow_fraction}")
        nested = isinstance(self.slow, HybridScorer)
        if deeper and not nested:
            raise ValueError(f"{self.name!r}: deeper stage targets need a hybrid slow part, not {self.slow.name!r}")
        if nested and not deeper and self.slow.calibration_ is None:
            raise ValueError(f"{self.name!r}: its slow part {self.slow.name!r} is an uncalibrated hybrid; pass deeper")
        if hasattr(self.fast, "calibrate"):  # a reward model standardizes on this set and returns its scores
            batch = await self.fast.calibrate(items)
        else:
            batch = await self.fast.score(items)
        certainty = self._certainty(batch, items)
        agreement = await self._agreement(items, batch.rewards)
        quantile, certainty_threshold, agreement_threshold, share = choose_thresholds(
            batch.rewards, certainty, agreement, target_slow_fraction
        )
        if deeper:
            sent = send_slow(batch.rewards, certainty, agreement, certainty_threshold, agreement_threshold)
            await self.slow.calibrate([items[i] for i in np.flatnonzero(sent)], deeper[0], deeper[1:])
        self.calibration_ = HybridCalibration(
            fast=self.fast.name,
            slow=self.slow.name,
            quantile=quantile,
            certainty_threshold=certainty_threshold,
            agreement_threshold=agreement_threshold,
            target_slow_fraction=target_slow_fraction,
            calibration_slow_fraction=share,
            n_items=len(items),
            fast_state=self.fast.state() if hasattr(self.fast, "state") else None,
            deeper=self.slow.calibration_ if nested else None,
        )
        return self.calibration_

    def load_calibration(self, calibration: HybridCalibration) -> None:
        """Reuse saved thresholds; they must come from the same fast and slow scorers and ERP setting, and hold
        a deeper stage's exactly where the slow part is a hybrid (a cascade), which then loads it."""
        if (calibration.fast, calibration.slow) != (self.fast.name, self.slow.name):
            raise ValueError(
                f"the thresholds were calibrated for fast={calibration.fast}, slow={calibration.slow}, "
                f"not fast={self.fast.name}, slow={self.slow.name}"
            )
        if (calibration.agreement_threshold is None) != (self.expected_reward is None):
            with_erp = "with" if calibration.agreement_threshold is not None else "without"
            raise ValueError(f"the thresholds were calibrated {with_erp} the ERP agreement check; this hybrid differs")
        nested = isinstance(self.slow, HybridScorer)
        if (calibration.deeper is not None) != nested:
            held = "hold a deeper stage's" if calibration.deeper is not None else "hold no deeper stage's"
            raise ValueError(
                f"the thresholds {held} calibration, but the slow part {self.slow.name!r} is "
                f"{'a' if nested else 'not a'} hybrid"
            )
        if nested:
            self.slow.load_calibration(calibration.deeper)
        if calibration.fast_state is not None:
            self.fast.load_state(calibration.fast_state)
        self.calibration_ = calibration

    async def score(self, items: list[ScoringItem]) -> ScoreBatch:
        if self.calibration_ is None:
            raise ValueError(f"hybrid scorer {self.name!r} has no thresholds; calibrate it on a calibration set first")
        batch = await self.fast.score(items)
        certainty = self._certainty(batch, items)
        agreement = await self._agreement(items, batch.rewards)
        slow = send_slow(
            batch.rewards,
            certainty,
            agreement,
            self.calibration_.certainty_threshold,
            self.calibration_.agreement_threshold,
        )
        rewards, errors, tokens = batch.rewards.copy(), list(batch.errors), batch.tokens
        stage = slow.astype(np.int64)
        picked = np.flatnonzero(slow)
        if len(picked):
            judged = await self.slow.score([items[i] for i in picked])
            rewards[picked] = judged.rewards
            for i, error in zip(picked, judged.errors, strict=True):
                errors[i] = error
            tokens += judged.tokens
            if judged.stage is not None:
                stage[picked] += judged.stage
        return ScoreBatch(rewards, tokens, errors, slow=slow, certainty=batch.certainty, stage=stage)

    def _certainty(self, batch: ScoreBatch, items: list[ScoringItem]) -> np.ndarray:
        """The fast scorer's certainty with ties broken by the items' tie keys."""
        if batch.certainty is None:
            raise ValueError(
                f"fast scorer {self.fast.name!r} reports no certainty; "
                "use a reward model, a logprob judge or a pairwise judge asked in both orders"
            )
        return batch.certainty + _TIE_BREAK * tie_keys(items)

    async def _agreement(self, items: list[ScoringItem], rewards: np.ndarray) -> np.ndarray | None:
        if self.expected_reward is None:
            return None
        expected = await asyncio.to_thread(
            self.expected_reward, [item.prompt for item in items], [item.model for item in items]
        )
        return 1.0 - np.abs(rewards - np.asarray(expected, dtype=np.float64))
