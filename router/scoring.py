"""Build a reward scorer from its `scorers:` entry in the registry (`erp collect --scorer NAME` calls this).

Heavy libraries load only for the kind built: LiteLLM for judges, torch and transformers for a reward model.
A hybrid whose slow part is another hybrid is a cascade; the outer entry's thresholds file holds every stage's
calibration. Every configuration problem is a one-line RegistryError naming the file, the key and the fix.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import ValidationError

from predictors.scorers.base import RewardScorer
from router.registry import Registry, RegistryError
from router.scorer_config import (
    AnswerScorerEntry,
    HybridScorerEntry,
    JudgeScorerEntry,
    PairwiseJudgeScorerEntry,
    ReplayScorerEntry,
    RewardModelScorerEntry,
)

if TYPE_CHECKING:
    from predictors.scorers.completion import CompletionClient
    from predictors.scorers.hybrid import ExpectedReward
    from predictors.scorers.replay import VerdictLog
    from router.engine import RoutingEngine


def build_scorer(
    registry: Registry, name: str, engine: RoutingEngine | None = None, require_calibration: bool = True
) -> RewardScorer:
    """The scorer registered as `name`; RegistryError (file, key, fix) when it cannot be built.

    `engine` (a loaded RoutingEngine) feeds a hybrid's ERP agreement check; without it, one is loaded from
    the registry when a hybrid needs it. `require_calibration=False` lets a hybrid be built before its
    thresholds exist, to calibrate it (with `cascade_targets` as its stages' targets).
    """
    return _build(registry, name, engine, require_calibration, nested=False)


def cascade_targets(registry: Registry, name: str) -> list[float]:
    """The target slow share of hybrid `name`, then of each hybrid nested on its slow side (a cascade's stages):
    `hybrid.calibrate(items, targets[0], deeper=targets[1:])`."""
    entry, targets = registry.scorer(name), []
    while isinstance(entry, HybridScorerEntry):
        targets.append(entry.target_slow_fraction)
        entry = registry.scorer(entry.slow)
    return targets


def _build(
    registry: Registry, name: str, engine: RoutingEngine | None, require_calibration: bool, nested: bool
) -> RewardScorer:
    """`build_scorer`; a `nested` hybrid (a cascade's inner stage) ignores its own thresholds file: the outer
    hybrid's file holds its calibration."""
    entry = registry.scorer(name)
    key = f"{registry.source}: key 'scorers[{registry.scorers.index(entry)}]"
    if isinstance(entry, JudgeScorerEntry):
        return _judge(entry, key)
    if isinstance(entry, PairwiseJudgeScorerEntry):
        from predictors.scorers.pairwise_judge import PairwiseJudge

        return PairwiseJudge(entry.name, _client(entry, key), orders=entry.orders, max_tokens=entry.max_tokens)
    if isinstance(entry, ReplayScorerEntry):
        return _replay(registry, entry, key)
    if isinstance(entry, RewardModelScorerEntry):
        return _reward_model(registry, entry, key)
    if isinstance(entry, AnswerScorerEntry):
        from predictors.scorers.answer import AnswerScorer

        return AnswerScorer(rel_tol=entry.rel_tol, abs_tol=entry.abs_tol)
    return _hybrid(registry, entry, key, engine, require_calibration, nested)


def erp_expected_reward(engine: RoutingEngine) -> ExpectedReward:
    """The ERP predictor's expected reward per (prompt, model) pair; NaN for models outside the enabled pool."""
    column = {model: j for j, model in enumerate(engine.models)}

    def expected(prompts: list[str], models: list[str | None]) -> np.ndarray:
        unique = list(dict.fromkeys(prompts))
        row = {prompt: i for i, prompt in enumerate(unique)}
        rewards = engine.predict(unique).rewards
        return np.array(
            [rewards[row[p], column[m]] if m in column else np.nan for p, m in zip(prompts, models, strict=True)]
        )

    return expected


def _judge(entry: JudgeScorerEntry, key: str) -> RewardScorer:
    from predictors.scorers.judge import LLMJudge, LogprobJudge

    client = _client(entry, key)
    if entry.kind == "judge_logprobs":
        return LogprobJudge(entry.name, client, top_logprobs=entry.top_logprobs)
    return LLMJudge(entry.name, client, max_tokens=entry.max_tokens)


def _client(entry: JudgeScorerEntry | PairwiseJudgeScorerEntry, key: str) -> CompletionClient:
    from predictors.scorers.completion import CompletionClient

    api_key = None
    if entry.api_key_env:
        api_key = os.environ.get(entry.api_key_env)
        if not api_key:
            raise RegistryError(
                f"{key}.api_key_env': environment variable {entry.api_key_env} is not set; "
                f"fix: export {entry.api_key_env}=<key of {entry.litellm_model}>"
            )
    return CompletionClient(
        litellm_model=entry.litellm_model,
        api_base=entry.api_base,
        api_key=api_key,
        timeout_s=entry.timeout_s,
        retries=entry.retries,
        backoff_s=entry.backoff_s,
        concurrency=entry.concurrency,
    )


def _replay(registry: Registry, entry: ReplayScorerEntry, key: str) -> RewardScorer:
    from predictors.scorers.replay import ReplayJudge

    path = registry.path_of(entry.path)
    try:
        log = _verdict_log(path.resolve())
    except FileNotFoundError as exc:
        raise RegistryError(f"{key}.path': {exc}") from None
    try:
        return ReplayJudge(entry.name, log, entry.judge, entry.mode, entry.orders, entry.tokens)
    except KeyError as exc:
        raise RegistryError(f"{key}.judge': {exc.args[0]}; fix: set judge and mode to a recorded pair") from None


@lru_cache(maxsize=4)
def _verdict_log(path: Path) -> VerdictLog:
    """One read of a judge-replay folder however many replay scorers (a cascade's stages) use it."""
    from predictors.scorers.replay import VerdictLog

    return VerdictLog.read(path)


def _reward_model(registry: Registry, entry: RewardModelScorerEntry, key: str) -> RewardScorer:
    path = registry.path_of(entry.path)
    if not (path / "config.json").is_file():
        raise RegistryError(
            f"{key}.path': no model at {path} (config.json missing); fix: download the reward model there, "
            f"e.g. `huggingface-cli download Skywork/Skywork-Reward-V2-Llama-3.1-8B --local-dir {path}`, "
            "or correct the path"
        )
    from predictors.scorers.reward_model import RewardModelScorer

    try:
        return RewardModelScorer(
            entry.name, path, entry.batch_size, entry.device, entry.max_length, entry.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        message = " ".join(str(exc).split())[:300]
        raise RegistryError(
            f"{key}.path': cannot load {path}: {message}; fix: point it at a complete checkpoint"
        ) from None


def _hybrid(
    registry: Registry,
    entry: HybridScorerEntry,
    key: str,
    engine: RoutingEngine | None,
    require_calibration: bool,
    nested: bool,
) -> RewardScorer:
    from predictors.scorers.hybrid import HybridScorer

    path = registry.path_of(entry.thresholds)
    recalibrate = (
        f"python -m benchmarks.scorer_eval --registry {registry.source} --hybrid {entry.name} --calibration FILE"
    )
    if require_calibration and not nested and not path.is_file():  # first: building the parts may load a model
        raise RegistryError(f"{key}.thresholds': file {path} not found; fix: calibrate it with `{recalibrate}`")
    expected = None
    if entry.use_erp:
        if engine is None:
            from router.engine import RoutingEngine

            engine = RoutingEngine.from_registry(registry.source)
        expected = erp_expected_reward(engine)
    fast = _build(registry, entry.fast, engine, require_calibration, nested=True)
    slow = _build(registry, entry.slow, engine, require_calibration, nested=True)
    hybrid = HybridScorer(entry.name, fast, slow, expected)
    if not nested and path.is_file():
        _load_thresholds(hybrid, path, key, recalibrate)
    return hybrid


def _load_thresholds(hybrid: RewardScorer, path: Path, key: str, recalibrate: str) -> None:
    """Load a hybrid's (and its cascade's deeper stages') saved thresholds; RegistryError when they do not fit."""
    from predictors.scorers.hybrid import HybridCalibration

    try:
        hybrid.load_calibration(HybridCalibration.load(path))
    except (ValidationError, ValueError) as exc:
        message = " ".join(str(exc).split())[:300]
        raise RegistryError(
            f"{key}.thresholds': {path} does not fit: {message}; fix: recalibrate with `{recalibrate}`"
        ) from None
