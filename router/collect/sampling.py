"""One sampled response per call: each pool candidate (a model or an arm) behind the scorers' ``CompletionClient``.

The client bounds the calls in flight per model and retries (tenacity, exponential backoff with jitter)
rate limits, timeouts, connection errors and 5xx; anything else fails the triple at once. An arm is called
exactly as the router calls it (its system prompt and parameters, ``dispatch.entry_request``). Costs are
billed usage tokens (reasoning included) at the registry's prices, through the ledger's price formula.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from predictors.scorers.completion import CompletionClient
from router.dispatch import entry_request
from router.ledger import reported_usage
from router.policy import token_cost
from router.registry import ModelEntry
from router.schemas import ChatParameters


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.7
    max_tokens: int = 1024
    concurrency: int = 8  # calls in flight per model
    timeout_s: float = 120.0  # per attempt
    retries: int = 4  # attempts after the first
    backoff_s: float = 1.0  # first wait; doubles with each retry


@dataclass(frozen=True)
class Sample:
    text: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    reasoning_tokens: int | None = None


class Sampler:
    """Samples the registry's models at the configured temperature; one client per model."""

    def __init__(self, entries: list[ModelEntry], usd_per_token: dict[str, tuple[float, float]], config: SamplingConfig) -> None:
        self.config = config
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
        asked = ChatParameters(temperature=self.config.temperature, max_tokens=self.config.max_tokens)
        messages, params = entry_request(self.entries[model], messages, asked)
        response = await self.clients[model].complete(messages, **params.forwarded())
        usage = reported_usage(response.usage)
        return Sample(
            text=response.choices[0].message.content or "",
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            cost_usd=float(token_cost(usage.prompt_tokens, usage.completion_tokens, np.asarray(self.prices[model]))),
            reasoning_tokens=usage.reasoning_tokens or None,
        )
