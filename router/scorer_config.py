"""The ``scorers:`` section of the registry: reward scorers and how hybrids and cascades combine them.

Each entry is a pydantic model (a tagged union on ``kind``); ``check_hybrid_parts`` and ``check_cascades`` are the
whole-section checks the registry runs, each error naming the entry's key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _LiteLLMJudgeFields(BaseModel):
    """How a judge served through LiteLLM is reached; shared by every LiteLLM judge kind."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    litellm_model: str = Field(min_length=1, description="LiteLLM model string of the judge")
    api_base: str | None = None
    api_key_env: str | None = Field(None, description="environment variable holding the judge's API key")
    concurrency: int = Field(8, ge=1, description="judge calls in flight at once")
    timeout_s: float = Field(60.0, gt=0, description="timeout per judge call")
    retries: int = Field(4, ge=0, description="retries of a call on 429, 5xx, timeouts and connection errors")
    backoff_s: float = Field(1.0, ge=0, description="first retry wait; doubles per retry, up to 30 s")


class JudgeScorerEntry(_LiteLLMJudgeFields):
    """An LLM judge: `judge` writes a rationale and a 1-10 score; `judge_logprobs` answers one score token."""

    kind: Literal["judge", "judge_logprobs"]
    max_tokens: int = Field(512, gt=0, description="judge reply budget (judge_logprobs always asks for 1 token)")
    top_logprobs: int = Field(20, ge=1, le=20, description="judge_logprobs: log-probabilities returned per token")


class PairwiseJudgeScorerEntry(_LiteLLMJudgeFields):
    """A pairwise LLM judge ("Output (a) or Output (b)?"); asked in both orders, its certainty is their consistency."""

    kind: Literal["judge_pairwise"]
    orders: Literal[1, 2] = Field(2, description="2: ask in both orders (certainty = consistency); 1: once, none")
    max_tokens: int = Field(50, gt=0, description="judge reply budget")


class ReplayScorerEntry(BaseModel):
    """A pairwise judge answering from recorded verdicts (a judge-replay folder) instead of calling a model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    kind: Literal["replay"]
    path: Path = Field(description="judge-replay folder (pairs.parquet, verdicts.parquet), relative to the registry")
    judge: str = Field(min_length=1, description="recorded judge, e.g. GPT-4")
    mode: str = Field(min_length=1, description="recorded mode, e.g. Vanilla or Metrics_Reference")
    orders: Literal[1, 2] = Field(2, description="2: both presentation orders (certainty = consistency); 1: one")
    tokens: Literal["all", "output"] = Field("all", description="count characters sent and received, or received only")


class RewardModelScorerEntry(BaseModel):
    """A local `AutoModelForSequenceClassification` reward model directory (e.g. a downloaded Skywork RM)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    kind: Literal["reward_model"]
    path: Path = Field(description="model directory (config, weights, tokenizer), relative to the registry")
    batch_size: int = Field(8, ge=1)
    device: str = Field("auto", description="auto (cuda when available), cpu, cuda or cuda:N")
    max_length: int = Field(4096, gt=0, description="tokens kept per (prompt, response) pair")
    trust_remote_code: bool = Field(False, description="needed by checkpoints with custom heads, e.g. ArmoRM")


class HybridScorerEntry(BaseModel):
    """Fast scorer first; the slow part only where the fast score is unsure or disagrees with the ERP predictor.

    A slow part that is itself a hybrid makes a cascade: each stage runs only where the one before is unsure.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    kind: Literal["hybrid"]
    fast: str = Field(
        description="name of a scorer with a certainty: judge_logprobs, reward_model, or judge_pairwise/replay "
        "asked in both orders"
    )
    slow: str = Field(
        description="name of a judge, judge_logprobs, judge_pairwise or replay scorer, or of another hybrid "
        "(a cascade: its target_slow_fraction is then its share of what reaches it)"
    )
    target_slow_fraction: float = Field(0.2, gt=0, lt=1, description="share of items sent to the slow part")
    use_erp: bool = Field(True, description="also check agreement with the fitted ERP predictor's expected reward")
    thresholds: Path = Field(
        description="calibrated thresholds (JSON; in a cascade, every stage's), written by benchmarks/scorer_eval.py"
    )


class AnswerScorerEntry(BaseModel):
    """Correctness against the prompt's reference `answer` (numbers within a tolerance): reward 1 or 0."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    kind: Literal["answer"]
    rel_tol: float = Field(1e-6, ge=0, description="relative tolerance of a numeric comparison")
    abs_tol: float = Field(1e-9, ge=0, description="absolute tolerance of a numeric comparison")


ScorerEntry = Annotated[
    JudgeScorerEntry
    | PairwiseJudgeScorerEntry
    | ReplayScorerEntry
    | RewardModelScorerEntry
    | HybridScorerEntry
    | AnswerScorerEntry,
    Field(discriminator="kind"),
]
FAST_KINDS = ("judge_logprobs", "reward_model", "judge_pairwise", "replay")
"""Kinds that report a certainty (the pairwise ones only when asked in both orders)."""
SLOW_KINDS = ("judge", "judge_logprobs", "judge_pairwise", "replay", "hybrid")
"""Kinds that score without a calibration of their own (a reward model needs one; a nested hybrid gets its own)."""
PAIRWISE_KINDS = ("judge_pairwise", "replay")


def _fits(entry: BaseModel, role: str) -> bool:
    """Whether a scorer entry can be a hybrid's `role` ("fast" or "slow") part."""
    if role == "fast":
        return entry.kind in FAST_KINDS and getattr(entry, "orders", 2) == 2
    return entry.kind in SLOW_KINDS


def _judges_pairs(by_name: dict[str, BaseModel], name: str) -> bool:
    """Whether scorer `name` judges pairs (response against alternative); a hybrid judges what its fast part does."""
    entry = by_name[name]
    return by_name[entry.fast].kind in PAIRWISE_KINDS if entry.kind == "hybrid" else entry.kind in PAIRWISE_KINDS


def check_hybrid_parts(scorers: list[ScorerEntry]) -> None:
    """Every hybrid's fast part reports a certainty and its slow part can score on its own."""
    by_name = {entry.name: entry for entry in scorers}
    for i, entry in enumerate(scorers):
        if entry.kind != "hybrid":
            continue
        for role, wanted in (("fast", FAST_KINDS), ("slow", SLOW_KINDS)):
            name = getattr(entry, role)
            part = by_name.get(name)
            if part is not None and _fits(part, role):
                continue
            found = f"{name!r} is a {part.kind} scorer" if part else f"no scorer named {name!r}"
            if part is not None and part.kind in wanted:
                found += " asked in one order (no certainty to threshold; set orders: 2 on it)"
            candidates = [n for n, e in by_name.items() if _fits(e, role) and n != entry.name]
            raise ValueError(
                f"scorers[{i}].{role}: {found}; the {role} part must be a {' or '.join(wanted)} scorer, "
                f"one of: {', '.join(candidates) or '(none yet)'}"
            )


def check_cascades(scorers: list[ScorerEntry]) -> None:
    """A cascade (hybrids nested on the slow side) ends in a non-hybrid, and judges one shape of item."""
    by_name = {entry.name: entry for entry in scorers}
    for i, entry in enumerate(scorers):
        if entry.kind != "hybrid":
            continue
        chain = [entry.name]
        while by_name[chain[-1]].kind == "hybrid":
            chain.append(by_name[chain[-1]].slow)
            if chain[-1] in chain[:-1]:
                raise ValueError(
                    f"scorers[{i}].slow: the cascade {' -> '.join(chain)} is a cycle; "
                    "end it with a slow part that is not a hybrid"
                )
        pairwise = by_name[entry.fast].kind in PAIRWISE_KINDS
        if _judges_pairs(by_name, entry.slow) != pairwise:
            shapes = ("single responses", "pairs (response against alternative)")
            raise ValueError(
                f"scorers[{i}].slow: {entry.slow!r} judges {shapes[not pairwise]} but the fast part "
                f"{entry.fast!r} judges {shapes[pairwise]}; both parts must judge the same"
            )
        if pairwise and entry.use_erp:
            raise ValueError(
                f"scorers[{i}].use_erp: a pairwise hybrid compares two responses, the ERP predictor "
                "rates one; set use_erp: false"
            )
