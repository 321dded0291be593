"""The Python SDK: ``Router.route`` decides, ``complete``/``acomplete`` call the chosen model through LiteLLM.

``Router`` composes three parts, each in its own module: the decider (routing text, cache, batching, one
call into the engine), the dispatcher (the attempt loop with fallbacks, sync and async) and the ledger
(budget reservations, realized cost, the decision log). The proxy serves through a ``Router`` too.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from router.decider import Decider, check_messages
from router.best_of import Selectors
from router.dispatch import AsyncRoutedStream, Call, Dispatcher, RoutedCompletion, RoutedStream
from router.engine import Decision, RoutingEngine
from router.errors import InvalidRequestError, ModelNotFoundError
from router.ledger import Budget, Ledger, RecordHook
from router.registry import ARM_SEPARATOR, ServingSettings
from router.schemas import ChatParameters, RoutingRecord
from router.store import Store, open_store

__all__ = ["AsyncRoutedStream", "RoutedCompletion", "RoutedStream", "Router"]


class Router:
    """Routes OpenAI-style chat requests over the registry's pool and calls the chosen model."""

    def __init__(self, engine: RoutingEngine, store: Store | None = None, on_record: RecordHook | None = None) -> None:
        self.engine = engine
        self.settings: ServingSettings = engine.registry.serving
        self.store = store or _open_store(None, self.settings)
        self.entries = {entry.name: entry for entry in engine.registry.enabled}
        self.decider = Decider(engine, self.store, self.settings.context_chars, self.settings.max_prompt_chars)
        self.ledger = Ledger(self.store, engine.registry.enabled, engine.usd_per_token, self.settings)
        self.dispatcher = Dispatcher(self.ledger, self.settings.timeout_s, Selectors(engine.registry))
        if on_record is not None:
            self.subscribe(on_record)

    @classmethod
    def from_registry(
        cls,
        path: str | Path,
        store: Store | None = None,
        redis_url: str | None = None,
        on_record: RecordHook | None = None,
    ) -> "Router":
        """Load the registry's pool; state in Redis when ``redis_url`` (or $REDIS_URL) is set, else in process."""
        engine = RoutingEngine.from_registry(path)
        if store is None:
            store = _open_store(redis_url or os.environ.get("REDIS_URL"), engine.registry.serving)
        return cls(engine, store, on_record)

    def subscribe(self, hook: RecordHook) -> None:
        """Call ``hook`` with every finished request's routing record (answered or failed)."""
        self.ledger.hooks.append(hook)

    def route(
        self,
        messages: list[dict],
        lambda_: float | None = None,
        models: list[str] | None = None,
        max_cost: float | None = None,
    ) -> Decision:
        """The decision for this conversation, without calling any model."""
        return self.decider.decide(messages, lambda_, models, max_cost)

    def complete(
        self,
        messages: list[dict],
        *,
        lambda_: float | None = None,
        models: list[str] | None = None,
        max_cost: float | None = None,
        model: str | None = None,
        stream: bool = False,
        spend_key: str | None = None,
        budget_usd: float | None = None,
        **openai_kwargs: Any,
    ) -> RoutedCompletion | RoutedStream:
        """Route and call through ``litellm.completion``; ``model`` names a registry model to bypass routing.

        ``openai_kwargs`` are OpenAI chat-completion parameters (the allow-list of ``ChatParameters``); any
        other keyword is an ``InvalidRequestError``. ``spend_key`` charges the spend to that name; with
        ``budget_usd`` the call is capped: refused or clamped so the key's spend never passes the budget.
        """
        call = self._plan(messages, lambda_, models, max_cost, model, stream, spend_key, budget_usd, openai_kwargs)
        return self.dispatcher.run(call)

    async def acomplete(
        self,
        messages: list[dict],
        *,
        lambda_: float | None = None,
        models: list[str] | None = None,
        max_cost: float | None = None,
        model: str | None = None,
        stream: bool = False,
        spend_key: str | None = None,
        budget_usd: float | None = None,
        **openai_kwargs: Any,
    ) -> RoutedCompletion | AsyncRoutedStream:
        """``complete`` through ``litellm.acompletion``; the decision and the store run in worker threads."""
        return await self.dispatcher.arun(
            lambda: self._plan(messages, lambda_, models, max_cost, model, stream, spend_key, budget_usd, openai_kwargs)
        )

    def _plan(
        self,
        messages: list[dict],
        lambda_: float | None,
        models: list[str] | None,
        max_cost: float | None,
        model: str | None,
        stream: bool,
        spend_key: str | None,
        budget_usd: float | None,
        openai_kwargs: dict[str, Any],
    ) -> Call:
        """Validate the parameters, then decide (or take the named model) and order the fallbacks."""
        params = parameters(openai_kwargs)
        request_id = f"erp-{uuid.uuid4().hex}"
        budget = Budget(spend_key, budget_usd) if spend_key is not None else None
        if model is not None and model not in self.entries:
            models, model = self._arms_to_route(model, models), None
        if model is not None:
            check_messages(messages, self.settings.max_prompt_chars)
            record = RoutingRecord(request_id=request_id, routed=False, chosen=model, spend_key=spend_key)
            return Call(record, [self.entries[model]], messages, params, stream, budget)
        decision = self.route(messages, lambda_, models, max_cost)
        record = RoutingRecord(
            request_id=request_id,
            routed=True,
            chosen=decision.model,
            lambda_=decision.lambda_,
            max_cost=max_cost,
            candidates=decision.ranked(),
            decision_ms=decision.decision_ms,
            spend_key=spend_key,
        )
        order = [decision.model] + [
            c.model
            for c in decision.ranked()
            if c.model != decision.model and (max_cost is None or c.predicted_cost_usd <= max_cost)
        ]
        entries = [self.entries[name] for name in order[: self.settings.fallback_attempts]]
        return Call(record, entries, messages, params, stream, budget)


    def arms(self, model: str) -> list[str]:
        """The enabled arms (MODEL@ARM) of a registry model; empty for a model without arms."""
        return [name for name in self.entries if name.startswith(model + ARM_SEPARATOR)]

    def _arms_to_route(self, model: str, models: list[str] | None) -> list[str]:
        """A model named without an arm routes among its arms (those in ``models``, if given); else 404 with a list."""
        arms = self.arms(model)
        if arms:
            return arms if models is None else [name for name in models if name in arms]
        base, _, arm = model.partition(ARM_SEPARATOR)
        if arm and self.arms(base):
            message = f"the model {base!r} has no arm {shorten(arm)!r}; its arms: {', '.join(self.arms(base))}"
        else:
            names = ", ".join(self.names)
            message = f"the model {shorten(model)!r} does not exist; use 'erp' or one of: {names}"
        raise ModelNotFoundError(message, param="model")

    @property
    def names(self) -> list[str]:
        """Every name a request may give as ``model``: each candidate, and each model that has arms."""
        bases = [name.partition(ARM_SEPARATOR)[0] for name in self.entries if ARM_SEPARATOR in name]
        return list(dict.fromkeys([*self.entries, *bases]))


def parameters(openai_kwargs: dict[str, Any]) -> ChatParameters:
    """The allow-listed OpenAI parameters; an unknown or invalid one is an ``InvalidRequestError`` naming it."""
    try:
        return ChatParameters.model_validate(openai_kwargs)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(str(part) for part in error["loc"]) or None
        if error["type"] == "extra_forbidden":
            message = f"Unrecognized request argument supplied: {shorten(str(param))}"
        else:
            message = f"{param}: {error['msg']}"
        raise InvalidRequestError(message, param=param) from None


def shorten(text: str, limit: int = 120) -> str:
    """``text`` cut to ``limit`` characters, so a caller's huge value is never echoed back whole."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _open_store(redis_url: str | None, settings: ServingSettings) -> Store:
    return open_store(
        redis_url,
        settings.cache_ttl_s,
        settings.cache_max_entries,
        settings.decision_log_max_len,
        settings.decision_log_max_bytes,
        settings.outage_allowance_usd,
    )
