"""Build a reward scorer from its `scorers:` entry in the registry (`erp collect --scorer NAME` calls this).

Heavy libraries load only for the kind built: LiteLLM for judges, torch and transformers for a reward model.
Every configuration problem is a one-line RegistryError naming the file, the key and the fix.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
from pydantic import ValidationError

from predictors.scorers.base import RewardScorer
from router.registry import (
    HybridScorerEntry,
    JudgeScorerEntry,
    Registry,
    RegistryError,
    RewardModelScorerEntry,
)

if TYPE_CHECKING:
    from predictors.scorers.hybrid import ExpectedReward
    from router.engine import RoutingEngine


def build_scorer(
    registry: Registry, name: str, engine: RoutingEngine | None = None, require_calibration: bool = True
) -> RewardScorer:
    """The scorer registered as `name`; RegistryError (file, key, fix) when it cannot be built.

    `engine` (a loaded RoutingEngine) feeds a hybrid's ERP agreement check; without it, one is loaded from
    the registry when a hybrid needs it. `require_calibration=False` lets a hybrid be built before its
    thresholds exist, to calibrate it.
    """
    entry = registry.scorer(name)
    key = f"{registry.source}: key 'scorers[{registry.scorers.index(entry)}]"
    if isinstance(entry, JudgeScorerEntry):
        return _judge(entry, key)
    if isinstance(entry, RewardModelScorerEntry):
        return _reward_model(registry, entry, key)
    return _hybrid(registry, entry, key, engine, require_calibration)


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
    from predictors.scorers.completion import CompletionClient
    from predictors.scorers.judge import LLMJudge, LogprobJudge

    api_key = None
    if entry.api_key_env:
        api_key = os.environ.get(entry.api_key_env)
        if not api_key:
            raise RegistryError(
                f"{key}.api_key_env': environment variable {entry.api_key_env} is not set; "
                f"fix: export {entry.api_key_env}=<key of {entry.litellm_model}>"
            )
    client = CompletionClient(
        litellm_model=entry.litellm_model,
        api_base=entry.api_base,
        api_key=api_key,
        timeout_s=entry.timeout_s,
        retries=entry.retries,
        backoff_s=entry.backoff_s,
        concurrency=entry.concurrency,
    )
    if entry.kind == "judge_logprobs":
        return LogprobJudge(entry.name, client, top_logprobs=entry.top_logprobs)
    return LLMJudge(entry.name, client, max_tokens=entry.max_tokens)


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
    registry: Registry, entry: HybridScorerEntry, key: str, engine: RoutingEngine | None, require_calibration: bool
) -> RewardScorer:
    from predictors.scorers.hybrid import HybridCalibration, HybridScorer

    path = registry.path_of(entry.thresholds)
    recalibrate = (
        f"python -m benchmarks.scorer_eval --registry {registry.source} --hybrid {entry.name} --calibration FILE"
    )
    if require_calibration and not path.is_file():  # checked first: building the parts may load a large model
        raise RegistryError(f"{key}.thresholds': file {path} not found; fix: calibrate it with `{recalibrate}`")
    fast, slow = build_scorer(registry, entry.fast, engine), build_scorer(registry, entry.slow, engine)
    expected = None
    if entry.use_erp:
        if engine is None:
            from router.engine import RoutingEngine

            engine = RoutingEngine.from_registry(registry.source)
        expected = erp_expected_reward(engine)
    hybrid = HybridScorer(entry.name, fast, slow, expected)
    if not path.is_file():
        return hybrid
    try:
        hybrid.load_calibration(HybridCalibration.load(path))
    except (ValidationError, ValueError) as exc:
        message = " ".join(str(exc).split())[:300]
        raise RegistryError(
            f"{key}.thresholds': {path} does not fit: {message}; fix: recalibrate with `{recalibrate}`"
        ) from None
    return hybrid
