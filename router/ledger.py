"""The ledger: what a call may cost before it runs, what it cost after, and the decision log.

Budgets are hard caps. Before each upstream attempt the ledger reserves the most the attempt can cost: an
upper bound on its input tokens plus its output cap (the caller's ``max_tokens``, else the model's own cap)
times ``n``, at the registry's prices. A caller's explicit ``max_tokens`` the remaining budget cannot cover is
refused (429, saying how many tokens are left); without one, the output cap is clamped to what the budget
covers and sent upstream as ``max_tokens``, so the upstream cannot generate past it. After the call the
reservation is settled to the realized cost: the usage the upstream reports, else tokens counted from the
streamed text. A failed attempt is refunded; one its caller cancelled is charged for its input.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from predictors.litellm_offline import litellm
from router.errors import BudgetExceededError, BudgetUnavailableError
from router.failover import FailoverStore
from router.policy import token_cost
from router.registry import ModelEntry, ServingSettings, output_token_cap
from router.schemas import ChatParameters, RoutingRecord
from router.store import Store, key_counter, model_counter, to_nano

RecordHook = Callable[[RoutingRecord], None]
NON_TEXT_PART_TOKENS = 2_000  # reserved per image, audio or file part (a 2048x2048 image is ~1,100 tokens)
MIN_CLAMPED_OUTPUT_TOKENS = 16  # a clamped call must still be able to say something


@dataclass(frozen=True)
class Budget:
    """The API key name a call is charged to, and its cap in USD across replicas (None: counted, not capped)."""

    spend_key: str
    budget_usd: float | None = None


@dataclass(frozen=True)
class Reservation:
    """What one attempt holds against its budget, and the output cap the upstream call must carry."""

    counter: str | None = None
    usd: float = 0.0
    max_output_tokens: int | None = None


@dataclass(frozen=True)
class Usage:
    """Tokens billed for one call; ``completion_tokens`` includes any reasoning tokens."""

    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int = 0


def reported_usage(usage: Any) -> Usage | None:
    """The upstream's usage, with reasoning tokens counted as output.

    OpenAI-style usage already includes ``completion_tokens_details.reasoning_tokens`` in ``completion_tokens``;
    a provider that reports more reasoning tokens than completion tokens reports them apart, and they are added.
    """
    if usage is None:
        return None
    details = getattr(usage, "completion_tokens_details", None)
    reasoning = int(getattr(details, "reasoning_tokens", None) or 0)
    completion = int(usage.completion_tokens or 0)
    if reasoning > completion:
        completion += reasoning
    return Usage(int(usage.prompt_tokens or 0), completion, reasoning)


def input_token_bound(messages: list[dict], params: ChatParameters) -> int:
    """An upper bound on the prompt tokens a provider can bill for this request.

    One token per UTF-8 byte of the messages and tool definitions as JSON (a byte-level BPE token covers at
    least one byte, and the JSON's keys and quotes outnumber a chat template's role and separator tokens),
    plus ``NON_TEXT_PART_TOKENS`` for every image, audio or file part.
    """
    tools = {"tools": params.tools, "functions": params.functions, "response_format": params.response_format}
    text = json.dumps([messages, tools], ensure_ascii=False)
    parts = sum(
        part.get("type") != "text"
        for message in messages
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if isinstance(part, dict)
    )
    return len(text.encode("utf-8")) + NON_TEXT_PART_TOKENS * parts


def counted_usage(messages: list[dict], generated_text: str) -> Usage:
    """Usage counted offline (LiteLLM's default tokenizer) when the upstream reported none, e.g. a cut stream."""
    return Usage(
        prompt_tokens=litellm.token_counter(messages=messages),
        completion_tokens=litellm.token_counter(text=generated_text, count_response_tokens=True) if generated_text else 0,
    )


class Ledger:
    """Reserve before each attempt, settle after the request, log every request, notify the hooks."""

    def __init__(self, store: Store, entries: list[ModelEntry], usd_per_token: np.ndarray, settings: ServingSettings) -> None:
        self.store = store
        self.prices = {entry.name: row for entry, row in zip(entries, usd_per_token, strict=True)}
        self.output_caps = {entry.name: output_token_cap(entry, settings) for entry in entries}
        self.samples = {entry.name: entry.best_of or 1 for entry in entries}
        self.input_copies = {e.name: e.best_of if e.best_of and e.best_of_sampling == "calls" else 1 for e in entries}
        self.hooks: list[RecordHook] = []

    def cost(self, model: str, usage: Usage) -> float:
        """Realized USD of a call: usage tokens at the registry's prices (the same prices routing predicts with)."""
        return float(token_cost(usage.prompt_tokens, usage.completion_tokens, self.prices[model]))

    def reserve(self, model: str, budget: Budget | None, messages: list[dict], params: ChatParameters) -> Reservation:
        """Hold the worst-case cost of one attempt of ``model`` against the budget; raises when it cannot.
        A best-of-N candidate holds N samples' output (and N inputs when it is sampled call by call)."""
        if budget is None or budget.budget_usd is None:
            return Reservation()
        counter = key_counter(budget.spend_key)
        choices = self.samples[model] if self.samples[model] > 1 else params.n or 1
        explicit = params.output_tokens_cap
        cap = explicit or self.output_caps[model]
        input_tokens = input_token_bound(messages, params) * self.input_copies[model]
        input_usd = float(token_cost(input_tokens, 0, self.prices[model]))
        per_token = float(self.prices[model][1]) * choices
        want = input_usd + cap * per_token
        least = want if explicit else input_usd + min(cap, MIN_CLAMPED_OUTPUT_TOKENS) * per_token
        granted = self.store.reserve(counter, want, budget.budget_usd, least)
        if granted is None:
            raise self._refusal(model, budget, want, explicit)
        tokens = cap
        if to_nano(granted) < to_nano(want) and per_token > 0:
            tokens = min(cap, math.floor((granted - input_usd) / per_token))
        return Reservation(counter, granted, tokens)

    def _refusal(self, model: str, budget: Budget, want: float, explicit: int | None) -> Exception:
        left = max(budget.budget_usd - self.store.spend(key_counter(budget.spend_key)), 0.0)
        if isinstance(self.store, FailoverStore) and self.store.degraded:
            return BudgetUnavailableError(
                f"the budget store is unreachable and this replica's outage allowance for API key "
                f"{budget.spend_key!r} is spent; budgeted requests resume when it returns"
            )
        if explicit:
            return BudgetExceededError(
                f"refused: API key {budget.spend_key!r} has {left:.6f} USD left of its {budget.budget_usd:g} USD budget, "
                f"and this request may cost up to {want:.6f} USD at {model}'s prices with max_tokens={explicit}; "
                "lower max_tokens or raise the budget"
            )
        return BudgetExceededError(
            f"refused: the spend budget of {budget.budget_usd:g} USD for API key {budget.spend_key!r} is exhausted "
            f"({left:.6f} USD left does not cover this request's input and {MIN_CLAMPED_OUTPUT_TOKENS} output tokens "
            f"at {model}'s prices)"
        )

    def release(self, reservation: Reservation) -> None:
        """Refund a failed attempt's reservation."""
        if reservation.counter is not None and reservation.usd:
            self.store.add_spend({reservation.counter: -reservation.usd})

    def settle(self, record: RoutingRecord, reservation: Reservation, usage: Usage | None) -> None:
        """Charge the realized cost (refunding the rest of the reservation), log the record, notify the hooks."""
        increments: dict[str, float] = {}
        if record.model is not None and usage is not None:
            record.prompt_tokens, record.completion_tokens = usage.prompt_tokens, usage.completion_tokens
            record.reasoning_tokens = usage.reasoning_tokens or None
            record.realized_cost_usd = self.cost(record.model, usage)
            increments[model_counter(record.model)] = record.realized_cost_usd
        if record.spend_key is not None:
            increments[key_counter(record.spend_key)] = (record.realized_cost_usd or 0.0) - reservation.usd
        if increments:
            self.store.add_spend(increments)
        self.store.log_decision(record.model_dump(mode="json"))
        for hook in self.hooks:
            hook(record)
