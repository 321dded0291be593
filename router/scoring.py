"""Build a reward scorer from its `scorers:` entry in the registry (`erp collect --scorer NAME` calls this).

Heavy libraries load only for the kind built: LiteLLM for judges, torch and transformers for a reward model.
Every configuration problem is a one-line RegistryError naming the file, the key and the fix.
"""

from __future__ import annotations

import os

from predictors.scorers.base import RewardScorer
from router.registry import JudgeScorerEntry, Registry, RegistryError


def build_scorer(registry: Registry, name: str, engine: "RoutingEngine | None" = None) -> RewardScorer:  # noqa: F821
    """The scorer registered as `name`; RegistryError (file, key, fix) when it cannot be built.

    `engine` (a loaded RoutingEngine) feeds a hybrid's ERP agreement check; without it one is loaded from
    the registry when a hybrid needs it.
    """
    entry = registry.scorer(name)
    index = registry.scorers.index(entry)
    if isinstance(entry, JudgeScorerEntry):
        return _judge(registry, entry, index)
    raise RegistryError(f"{registry.source}: key 'scorers[{index}].kind': {entry.kind} is not available yet")


def _judge(registry: Registry, entry: JudgeScorerEntry, index: int) -> RewardScorer:
    from predictors.scorers.completion import CompletionClient
    from predictors.scorers.judge import LLMJudge, LogprobJudge

    api_key = None
    if entry.api_key_env:
        api_key = os.environ.get(entry.api_key_env)
        if not api_key:
            raise RegistryError(
                f"{registry.source}: key 'scorers[{index}].api_key_env': environment variable "
                f"{entry.api_key_env} is not set; fix: export {entry.api_key_env}=<key of {entry.litellm_model}>"
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
