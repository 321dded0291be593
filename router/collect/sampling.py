"""One sampled response per call: each pool candidate (a model or an arm) behind the scorers' ``CompletionClient``.

The client bounds the calls in flight per model and retries (tenacity, exponential backoff with jitter)
rate limits, timeouts, connection errors and 5xx; anything else fails the triple at once. An arm is called
exactly as the router calls it (its system prompt and parameters, ``dispatch.entry_request``; a best-of-N
candidate samples N answers and keeps its selector's pick, ``router.best_of``). Costs are billed usage tokens
(reasoning included, every sample of a best-of-N candidate) at the registry's prices, through the ledger's price
formula. With ``logprobs`` set, each response's per-token log-probabilities (and that many alternatives) are kept,
for fitting a best-of-N selector (``erp fit-selector``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np

from predictors.scorers.completion import CompletionClient
from predictors.token_features import field
from router.best_of import Selectors, merge_responses
from router.dispatch import entry_request
from router.ledger import reported_usage
from router.policy import token_cost
from router.registry import ModelEntry, Registry
from router.schemas import ChatParameters


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.7
    max_tokens: int = 1024
    concurrency: int = 8  # calls in flight per model
    timeout_s: float = 120.0  # per attempt
    retries: int = 4  # attempts after the first
    backoff_s: float = 1.0  # first wait; doubles with each retry
    logprobs: int | None = None  # keep per-token log-probabilities with this many alternatives


@dataclass(frozen=True)
class Sample:
    text: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    reasoning_tokens: int | None = None
    logprobs: list[dict] | None = None  # per token: {"token", "logprob", "top_logprobs": [{"token", "logprob"}]}


class Sampler:
    """Samples the registry's models at the configured temperature; one client per model."""

    def __init__(
        self, registry: Registry, entries: list[ModelEntry], usd_per_token: dict[str, tuple[float, float]], config: SamplingConfig
    ) -> None:
        self.config = config
        self.selectors = Selectors(registry)
        self.prices = usd_per_token
        self.entries = {entry.name: entry for entry in entries}
        self.clients = {
            entry.name: CompletionClient(
                litellm_model=entry.litellm_model,
                api_base=entry.api_base,
                api_key=entry.api_key,
                timeout_s=config.timeout_s,
                retries=config.retries,
                backoff_s=config.backoff_s,
                concurrency=config.concurrency,
            )
            for entry in entries
        }

    async def sample(self, model: str, messages: list[dict]) -> Sample:
        """One response of ``model``; raises the last error once retries are spent or it cannot be retried."""
        entry = self.entries[model]
        keep = {"logprobs": True, "top_logprobs": self.config.logprobs} if self.config.logprobs is not None else {}
        asked = ChatParameters(temperature=self.config.temperature, max_tokens=self.config.max_tokens, **keep)
        messages, params = entry_request(entry, messages, asked)
        if entry.best_of:
            calls = self.selectors.request_arguments(entry, params.forwarded())
            responses = await asyncio.gather(*(self.clients[model].complete(messages, **args) for args in calls))
            response, _ = self.selectors.pick(entry, messages, merge_responses(list(responses)))
        else:
            response = await self.clients[model].complete(messages, **params.forwarded())
        usage = reported_usage(response.usage)
        return Sample(
            text=response.choices[0].message.content or "",
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            cost_usd=float(token_cost(usage.prompt_tokens, usage.completion_tokens, np.asarray(self.prices[model]))),
            reasoning_tokens=usage.reasoning_tokens or None,
            logprobs=_token_logprobs(response.choices[0]) if self.config.logprobs is not None else None,
        )


def _token_logprobs(choice: Any) -> list[dict] | None:
    """The choice's per-token log-probabilities as plain JSON, or None when the upstream sent none."""
    content = field(field(choice, "logprobs"), "content")
    if not content:
        return None
    return [
        {
            "token": field(item, "token"),
            "logprob": field(item, "logprob"),
            "top_logprobs": [
                {"token": field(alt, "token"), "logprob": field(alt, "logprob")} for alt in field(item, "top_logprobs") or []
            ],
        }
        for item in content
    ]
